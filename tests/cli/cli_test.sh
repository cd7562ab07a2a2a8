#!/usr/bin/env bash
# Drives the `cpc` CLI for the tests in tests/cli/CMakeLists.txt.
#   cli_test.sh CPC CASE
# Each case works in its own temporary directory and prints what it checked.
set -u
CPC=$1
CASE=$2
# A runaway writer must not fill the disk: no file over 1 GiB (the 64 MiB
# guest's snapshot is ~64 MiB).
ulimit -f $((1024 * 1024))
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cpc-cli-test.XXXXXX") || exit 1
trap 'rm -rf "$WORK"' EXIT

fail() {
  echo "FAIL ($CASE): $*" >&2
  for f in "$WORK"/*.out "$WORK"/*.err; do
    [ -f "$f" ] && { echo "--- $f" >&2; cat "$f" >&2; }
  done
  exit 1
}

# run NAME EXPECTED_RC cpc-args...: runs cpc, keeps NAME.out / NAME.err.
run() {
  local name=$1 want=$2
  shift 2
  "$CPC" "$@" >"$WORK/$name.out" 2>"$WORK/$name.err"
  local rc=$?
  [ "$rc" -eq "$want" ] || fail "cpc $* exited $rc, want $want"
}

# The whole of stderr is exactly one line "cpc: <status>" matching $2.
one_error_line() {
  local err="$WORK/$1.err"
  [ "$(wc -l <"$err")" -eq 1 ] || fail "$1: stderr is not exactly one line"
  grep -Eq "^cpc: $2" "$err" || fail "$1: stderr does not match 'cpc: $2'"
}

# A small snapshot: 64 MiB guest, dirty workload, 2 streams.
small_snapshot() {
  run snapshot 0 snapshot --out "$WORK/s.snap" --memory-mib 64 --hvcpus 2 \
    --workload dirty --dirty-mib-s 64 --wss-mib 8 --run-ms 100 \
    --progress lines
  [ -s "$WORK/s.snap" ] || fail "no snapshot file"
  [ -s "$WORK/s.snap.digest" ] || fail "no digest file"
  grep -q "^snapshot written to " "$WORK/snapshot.out" || fail "no summary"
  grep -Eq "^memory digest .*: [0-9a-f]{64}$" "$WORK/snapshot.out" ||
    fail "no digest printed"
}

case "$CASE" in
  roundtrip)
    small_snapshot
    run restore 0 restore --in "$WORK/s.snap" --run-ms 50 --progress lines
    grep -q "^memory digest matches the snapshot's" "$WORK/restore.out" ||
      fail "restore did not report a digest match"
    # The digest printed on both sides is the same.
    a=$(grep -Eo '[0-9a-f]{64}$' "$WORK/snapshot.out" | head -1)
    b=$(grep -Eo '[0-9a-f]{64}$' "$WORK/restore.out" | head -1)
    [ -n "$a" ] && [ "$a" = "$b" ] || fail "digests differ: $a vs $b"
    grep -q "^guest resumed" "$WORK/restore.out" || fail "guest not resumed"
    # Plain progress lines (stderr is not a terminal), no error line.
    grep -q "^restore .*%" "$WORK/restore.err" || fail "no progress lines"
    ! grep -q "^cpc: " "$WORK/restore.err" || fail "error line on success"
    echo "roundtrip ok: digest $a"
    ;;
  truncated)
    small_snapshot
    size=$(stat -c %s "$WORK/s.snap")
    cp "$WORK/s.snap" "$WORK/t.snap"
    truncate -s $((size / 2)) "$WORK/t.snap"
    cp "$WORK/s.snap.digest" "$WORK/t.snap.digest"
    run truncated 1 restore --in "$WORK/t.snap" --progress none
    one_error_line truncated ".+"
    echo "truncated ok: $(cat "$WORK/truncated.err")"
    ;;
  wrong_digest)
    # A digest file that disagrees (same snapshot, other hash) is a failure:
    # the comparison is real.
    small_snapshot
    sed -i -E 's/^sha256 .*/sha256 '"$(printf '0%.0s' {1..64})"'/' \
      "$WORK/s.snap.digest"
    run wrong 1 restore --in "$WORK/s.snap" --progress none
    one_error_line wrong "data_loss: .*differs from the snapshot's"
    echo "wrong_digest ok: $(cat "$WORK/wrong.err")"
    ;;
  missing_file)
    run missing 1 restore --in "$WORK/nonexistent.snap" --progress none
    one_error_line missing ".+"
    ;;
  bad_flag)
    run bad 2 snapshot --out "$WORK/x.snap" --bogus 1
    one_error_line bad "invalid_argument: snapshot: unknown flag '--bogus'"
    run bad2 2 restore --in
    one_error_line bad2 "invalid_argument: restore: --in needs a value"
    run bad3 2 snapshot --out "$WORK/x.snap" --memory-mib lots
    one_error_line bad3 "invalid_argument: snapshot: --memory-mib wants"
    run bad4 2 snapshot --memory-mib 64
    one_error_line bad4 "invalid_argument: snapshot: --out FILE is required"
    run bad5 2 frobnicate
    one_error_line bad5 "invalid_argument: unknown command 'frobnicate'"
    [ ! -e "$WORK/x.snap" ] || fail "a usage error wrote a file"
    ;;
  *)
    fail "unknown case"
    ;;
esac
echo "PASS ($CASE)"
