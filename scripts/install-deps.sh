#!/usr/bin/env bash
# Installs everything libcpc needs to build, test and benchmark on Debian 12 (bookworm).
# One script for the README commands and CI. Boost is pinned to 1.81: bookworm's
# default libboost-dev is 1.74 and the two -dev packages conflict.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
pkgs=(cmake ninja-build g++ clang-14 libclang-rt-14-dev pkg-config git
      libssl-dev libboost1.81-dev libspdlog-dev libfmt-dev catch2)
# Debian builds ipsec-mb for amd64 only; elsewhere the OpenSSL engine is used.
if [ "$(dpkg --print-architecture)" = amd64 ]; then pkgs+=(libipsec-mb-dev); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
