#!/usr/bin/env bash
# run.sh shows examples/exec-tracer end to end, as root, with one command:
#
#	sudo examples/exec-tracer/run.sh
#
# It builds bpfsup and the child, runs `bpfsup run -o bpf/exectrace.bpf.o --
# exec-tracer` (no -a: the section names the tracepoint), runs a few commands,
# shows the events the child read from the ring buffer, kills the child to
# show that bpfsup restarts it on the same buffer with the events of the
# execs in between, and removes everything (bpfsup down, its own pin root and
# state directory). It exits non-zero when an exec goes unseen.
set -euo pipefail

cd "$(dirname "$0")/../.."
GO=${GO:-go}
PIN_ROOT=/sys/fs/bpf/bpfsup-demo-exectrace
STATE_DIR=/run/bpfsup-demo-exectrace

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() {
	printf '\n\033[1;31mFAILED: %s\033[0m\n' "$*" >&2
	exit 1
}
# wait_log PATTERN: wait up to 10 s for PATTERN in the log.
wait_log() {
	for _ in $(seq 100); do
		grep -q -- "$1" "$WORK/log" && return 0
		sleep 0.1
	done
	cat "$WORK/log"
	fail "no '$1' in the log"
}

[[ $(id -u) == 0 ]] || fail "run me as root (BPF and bpffs need it)"
[[ -e $PIN_ROOT ]] && fail "$PIN_ROOT exists: another run going on?"

WORK=$(mktemp -d /tmp/bpfsup-exectrace.XXXXXX)
SUP_PID=
cleanup() {
	local code=$?
	trap - EXIT INT TERM
	set +e
	if [[ -n $SUP_PID ]]; then
		kill -TERM "$SUP_PID"
		wait "$SUP_PID"
	fi 2>/dev/null
	[[ -d $PIN_ROOT ]] && "$WORK/bpfsup" down --pin-root "$PIN_ROOT" --state-dir "$STATE_DIR" >/dev/null 2>&1
	rmdir "$PIN_ROOT" 2>/dev/null
	rm -rf "$STATE_DIR" "$WORK"
	exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "building bpfsup and the child"
"$GO" build -o "$WORK/bpfsup" ./cmd/bpfsup
"$GO" build -o "$WORK/exec-tracer" ./examples/exec-tracer
# A command of our own, so that its events are easy to pick out.
cp /bin/true "$WORK/traced-true"

say "bpfsup run -o bpf/exectrace.bpf.o --restart always -- exec-tracer"
"$WORK/bpfsup" run --pin-root "$PIN_ROOT" --state-dir "$STATE_DIR" --restart always --restart-delay 100ms \
	-o bpf/exectrace.bpf.o -- "$WORK/exec-tracer" >"$WORK/log" 2>&1 &
SUP_PID=$!
wait_log "reading exec events"

say "three execs of $WORK/traced-true"
for i in 1 2 3; do "$WORK/traced-true"; done
wait_log "file=$WORK/traced-true"
[[ $(grep -c "file=$WORK/traced-true" "$WORK/log") == 3 ]] || { cat "$WORK/log"; fail "not 3 events"; }
grep "file=$WORK/traced-true" "$WORK/log" | sed 's/^/   | /'

say "kill -9 the child; exec while it is down; bpfsup restarts it on the same ring buffer"
CHILD=$(grep -o 'exec-tracer pid [0-9]*' "$WORK/log" | tail -1 | awk '{print $3}')
kill -9 "$CHILD"
cp /bin/true "$WORK/while-down"
"$WORK/while-down"
wait_log "file=$WORK/while-down"
grep -E "exec-tracer pid|file=$WORK/while-down" "$WORK/log" | sed 's/^/   | /'

say "bpfsup status"
"$WORK/bpfsup" status --pin-root "$PIN_ROOT" --state-dir "$STATE_DIR" | sed 's/^/   | /'
say "done: stopping bpfsup, bpfsup down"
