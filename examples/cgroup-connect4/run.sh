#!/usr/bin/env bash
# run.sh shows examples/cgroup-connect4 end to end, as root, with one command:
#
#	sudo examples/cgroup-connect4/run.sh [PORT]
#
# It builds bpfsup and the child, makes a cgroup v2 directory, has bpfsup
# attach bpf/connect4_block.bpf.o's block_connect4 to it (-a PROG@CGROUP: the
# section names the hook) and start the child blocking PORT (9999 by
# default), then connects from inside the cgroup and from outside, shows what
# the child printed, and removes everything: bpfsup down, the cgroup, its own
# pin root and state directory. The connects are UDP: connect() on a UDP
# socket sends no packet. It exits non-zero when the policy does not hold.
set -euo pipefail

cd "$(dirname "$0")/../.."
GO=${GO:-go}
PORT=${1:-9999}
PIN_ROOT=/sys/fs/bpf/bpfsup-demo-connect4
STATE_DIR=/run/bpfsup-demo-connect4

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() {
	printf '\n\033[1;31mFAILED: %s\033[0m\n' "$*" >&2
	exit 1
}

[[ $(id -u) == 0 ]] || fail "run me as root (BPF, bpffs and cgroups need it)"
CG_ROOT=$(awk '{ for (i = 1; i < NF; i++) if ($i == "-") { if ($(i + 1) == "cgroup2") { print $5; exit } break } }' /proc/self/mountinfo)
[[ -n $CG_ROOT ]] || fail "cgroup v2 is not mounted"
CG=$CG_ROOT/bpfsup-demo-connect4
[[ -e $CG ]] && fail "$CG exists: another run going on? (rmdir $CG)"
[[ -e $PIN_ROOT ]] && fail "$PIN_ROOT exists: another run going on?"

WORK=$(mktemp -d /tmp/bpfsup-connect4.XXXXXX)
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
	rmdir "$PIN_ROOT" "$CG" 2>/dev/null
	rm -rf "$STATE_DIR" "$WORK"
	exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "building bpfsup and the child"
"$GO" build -o "$WORK/bpfsup" ./cmd/bpfsup
"$GO" build -o "$WORK/cgroup-connect4" ./examples/cgroup-connect4
mkdir "$CG"
echo "   cgroup $CG"

say "bpfsup run -o bpf/connect4_block.bpf.o -a block_connect4@$CG -- cgroup-connect4 -block $PORT"
"$WORK/bpfsup" run --pin-root "$PIN_ROOT" --state-dir "$STATE_DIR" \
	-o bpf/connect4_block.bpf.o -a "block_connect4@$CG" -- "$WORK/cgroup-connect4" -block "$PORT" \
	>"$WORK/log" 2>&1 &
SUP_PID=$!
for _ in $(seq 100); do
	grep -q "blocking connect()" "$WORK/log" && break
	kill -0 "$SUP_PID" 2>/dev/null || { cat "$WORK/log"; fail "bpfsup exited"; }
	sleep 0.1
done
grep -q "blocking connect()" "$WORK/log" || { cat "$WORK/log"; fail "the child did not start"; }

# try WHERE PORT: connect a UDP socket to 127.0.0.1:PORT from a shell that
# first moves itself into the cgroup (WHERE=in) or stays out (WHERE=out).
try() {
	local move=:
	[[ $1 == in ]] && move="echo \$\$ > $CG/cgroup.procs"
	bash -c "$move; exec 3<>/dev/udp/127.0.0.1/$2" 2>/dev/null
}

say "connect() from inside and outside the cgroup"
for i in 1 2 3; do
	try in "$PORT" && fail "connect to port $PORT from inside the cgroup was allowed"
done
echo "   inside the cgroup, port $PORT:  Operation not permitted (3 times)"
try in $((PORT + 1)) || fail "connect to port $((PORT + 1)) from inside the cgroup was refused"
echo "   inside the cgroup, port $((PORT + 1)):  allowed"
try out "$PORT" || fail "connect to port $PORT from outside the cgroup was refused"
echo "   outside the cgroup, port $PORT: allowed"

for _ in $(seq 50); do
	grep -q "(3 in all)" "$WORK/log" && break
	sleep 0.1
done
say "what the child printed"
grep -v 'level=' "$WORK/log" | sed 's/^/   | /'
grep -q "blocked .* to port $PORT (3 in all)" "$WORK/log" || fail "the child did not count 3 blocked connects"

say "bpfsup status"
"$WORK/bpfsup" status --pin-root "$PIN_ROOT" --state-dir "$STATE_DIR" | sed 's/^/   | /'
say "done: stopping bpfsup, bpfsup down, removing the cgroup"
