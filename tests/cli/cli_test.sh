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
BG_PID=  # a background `cpc incoming`, if any
trap '[ -n "$BG_PID" ] && kill "$BG_PID" 2>/dev/null; rm -rf "$WORK"' EXIT

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

# A line's 64-hex-digit digest: the first such word in lines matching $2.
digest_of() {
  grep -E "$2" "$WORK/$1.out" | grep -Eo '\b[0-9a-f]{64}\b' | head -1
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
  background)
    # The guest runs on during the copy; the digest taken at the snapshot's
    # instant still matches the restored guest.
    run snapshot 0 snapshot --out "$WORK/b.snap" --memory-mib 64 --hvcpus 2 \
      --workload dirty --dirty-mib-s 256 --wss-mib 16 --run-ms 100 \
      --background --progress lines
    grep -Eq "^ *copied +[0-9]+ pages" "$WORK/snapshot.out" ||
      fail "no copied-pages line"
    run restore 0 restore --in "$WORK/b.snap" --run-ms 50 --progress none
    grep -q "^memory digest matches the snapshot's" "$WORK/restore.out" ||
      fail "restore did not report a digest match"
    echo "background ok: $(grep -E '^ *(downtime|copied)' "$WORK/snapshot.out" | tr -s ' ')"
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
    run bad6 2 migrate --streams 0
    one_error_line bad6 "invalid_argument: migrate: --streams wants"
    run bad7 2 migrate --to nowhere
    one_error_line bad7 "invalid_argument: migrate: --to: bad endpoint"
    run bad8 2 migrate --workload cpu
    one_error_line bad8 "invalid_argument: migrate: --workload must be"
    run bad9 2 incoming --run-ms 5
    one_error_line bad9 "invalid_argument: incoming: --listen HOST:PORT"
    [ ! -e "$WORK/x.snap" ] || fail "a usage error wrote a file"
    ;;
  migrate)
    # The demo, small: the source VMM migrates a 64 MiB guest with a dirty
    # workload to the `cpc incoming` process it starts itself.
    run migrate 0 migrate --memory-mib 64 --workload dirty --progress lines
    out="$WORK/migrate.out"
    grep -q "^memory equality: PASS (digest [0-9a-f]\{64\}" "$out" ||
      fail "no memory equality PASS"
    # Two VMM processes: the destination's own lines came back, its digest
    # is the source's.
    grep -Eq "^destination VMM \(pid [0-9]+, emulated chip 2\): cpc incoming \
listening on 127\.0\.0\.1:[0-9]+$" "$out" || fail "no destination process"
    src=$(digest_of migrate "^source memory digest ")
    dst=$(digest_of migrate "^  \| digest [0-9a-f]{64} pages [0-9]+ ")
    [ -n "$src" ] && [ "$src" = "$dst" ] || fail "digests differ: $src vs $dst"
    # query-migrate-like statistics.
    for row in status transferred rounds rate "dirty rate" throttle \
      "setup time" downtime; do
      grep -Eq "^  $row +" "$out" || fail "no '$row' row"
    done
    grep -Eq "^  status +completed$" "$out" || fail "not completed"
    grep -Eq "^  downtime +.* expected, .* actual " "$out" ||
      fail "no expected vs actual downtime"
    # Never both: the source is refused, the destination ran the guest.
    grep -q "^source can no longer run: ResumeGuest refused: \
failed_precondition " "$out" || fail "the source was not refused"
    grep -Eq "^  \| guest resumed on this machine: .* dirtied [1-9][0-9]* \
pages" "$out" || fail "the destination did not run a dirtying guest"
    # The child was reaped: its pid is gone.
    pid=$(grep -Eo "^destination VMM \(pid [0-9]+" "$out" | grep -Eo "[0-9]+$")
    [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null || fail "child $pid left"
    grep -q "^migrate .*100%" "$WORK/migrate.err" || fail "no progress lines"
    ! grep -q "^cpc: " "$WORK/migrate.err" || fail "error line on success"
    echo "migrate ok: digest $src"
    ;;
  migrate_to)
    # Two VMMs started separately: `cpc incoming` and `cpc migrate --to`.
    "$CPC" incoming --listen 127.0.0.1:0 --run-ms 50 --progress lines \
      >"$WORK/incoming.out" 2>"$WORK/incoming.err" &
    BG_PID=$!
    addr=
    for _ in $(seq 1 300); do
      addr=$(sed -n 's/^listening on //p' "$WORK/incoming.out" | head -1)
      [ -n "$addr" ] && break
      kill -0 "$BG_PID" 2>/dev/null || break
      sleep 0.1
    done
    [ -n "$addr" ] || fail "cpc incoming did not print 'listening on'"
    run migrate 0 migrate --to "$addr" --memory-mib 64 --streams 1 \
      --workload dirty --progress none
    wait "$BG_PID"
    rc=$?
    BG_PID=
    [ "$rc" -eq 0 ] || fail "cpc incoming exited $rc"
    src=$(digest_of migrate "^memory equality: compare with ")
    dst=$(digest_of incoming "^digest [0-9a-f]{64} pages [0-9]+ ")
    [ -n "$src" ] && [ "$src" = "$dst" ] || fail "digests differ: $src vs $dst"
    grep -q "^guest resumed on this machine" "$WORK/incoming.out" ||
      fail "incoming did not run the guest"
    grep -q "^incoming .*100%" "$WORK/incoming.err" ||
      fail "no incoming progress lines"
    echo "migrate_to ok: digest $src"
    ;;
  migrate_unreachable)
    # Nothing listens on port 1: one error line, exit 1, no statistics.
    run unreachable 1 migrate --to 127.0.0.1:1 --memory-mib 64
    one_error_line unreachable "io_error: migration to 127\.0\.0\.1:1: "
    ! grep -q "memory equality" "$WORK/unreachable.out" ||
      fail "printed a result"
    echo "migrate_unreachable ok: $(cat "$WORK/unreachable.err")"
    ;;
  *)
    fail "unknown case"
    ;;
esac
echo "PASS ($CASE)"
