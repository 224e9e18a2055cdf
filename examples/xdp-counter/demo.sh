#!/usr/bin/env bash
# demo.sh shows bpfsup end to end, as root, on a fresh machine (`make demo`
# builds bin/bpfsup and runs it): two network namespaces joined by a veth
# pair, bpf/counter.bpf.o's count_packets attached with XDP to one end under
# bpfsup, ping from the other end, and the example child (xdp-counter)
# printing the counts. Then it kills the child, kills bpfsup with SIGKILL and
# starts it again, checking each time that nothing detached and nothing was
# reloaded, and finally runs `bpfsup down` and removes the namespaces.
#
# Everything lives in its own pin root, state directory and namespaces, so it
# never touches another bpfsup, and it cleans up on exit and on ctrl-C. It
# exits non-zero when a check fails.
set -euo pipefail

cd "$(dirname "$0")/../.."
BPFSUP=${BPFSUP:-bin/bpfsup}
GO=${GO:-go}
PIN_ROOT=/sys/fs/bpf/bpfsup-demo
STATE_DIR=/run/bpfsup-demo
NS_A=bpfsup-demo-a
NS_B=bpfsup-demo-b
VETH_A=bpfsupdemo-a
VETH_B=bpfsupdemo-b
ADDR_A=10.253.77.1
ADDR_B=10.253.77.2
COUNTERS=$PIN_ROOT/counter/maps/counters
LINK=$PIN_ROOT/counter/links/count_packets

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
info() { printf '   %s\n' "$*"; }
fail() {
	printf '\n\033[1;31mFAILED: %s\033[0m\n' "$*" >&2
	exit 1
}

# wait_for SECONDS WHAT CMD...: run CMD every 0.1 s until it succeeds.
wait_for() {
	local timeout=$1 what=$2
	shift 2
	local deadline=$((SECONDS + timeout))
	until "$@"; do
		((SECONDS < deadline)) || fail "timed out after ${timeout}s waiting for $what"
		sleep 0.1
	done
}

[[ $(id -u) == 0 ]] || fail "run me as root (BPF, bpffs and network namespaces need it)"
[[ -x $BPFSUP ]] || fail "$BPFSUP is missing: run 'make demo', or 'make build' first"
for tool in ip bpftool ping "$GO"; do
	command -v "$tool" >/dev/null || fail "$tool is not installed"
done

WORK=$(mktemp -d /tmp/bpfsup-demo.XXXXXX)
LOG=$WORK/bpfsup.log
: >"$LOG"
SUP_PID=
PING_PID=

cleanup() {
	local code=$?
	trap - EXIT INT TERM
	set +e # clean up as much as can be, whatever fails
	say "cleaning up"
	if [[ -n $PING_PID ]]; then
		kill "$PING_PID"
		wait "$PING_PID"
	fi 2>/dev/null
	if [[ -n $SUP_PID ]]; then
		kill -TERM "$SUP_PID"
		wait "$SUP_PID"
	fi 2>/dev/null
	if [[ -d $PIN_ROOT ]]; then
		"$BPFSUP" down --pin-root "$PIN_ROOT" --state-dir "$STATE_DIR" >/dev/null 2>&1 || true
		rmdir "$PIN_ROOT" 2>/dev/null || true
	fi
	rm -rf "$STATE_DIR" "$WORK"
	ip netns del "$NS_A" 2>/dev/null || true
	ip netns del "$NS_B" 2>/dev/null || true
	info "namespaces, pins and state removed"
	exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

icmp_count() {
	# counters[1] is ICMP; bpftool prints the map with its BTF as JSON.
	local v
	v=$(bpftool map lookup pinned "$COUNTERS" key 1 0 0 0 | sed -n 's/.*"value": \([0-9]*\).*/\1/p') || true
	echo "${v:-0}"
}
count_above() { (($(icmp_count) >= $1)); }
link_field() { bpftool -j link show pinned "$LINK" | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }
children() { grep -c 'counters map id' "$LOG" || true; }
child_pid() { grep -o 'xdp-counter pid [0-9]*' "$LOG" | tail -1 | awk '{print $3}'; }
map_ids() { grep -o 'counters map id [0-9]*' "$LOG" | awk '{print $4}' | sort -u; }
has_children() { (($(children) >= $1)); }
gone() { ! kill -0 "$1" 2>/dev/null || grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }

# show_rising WHAT: the ICMP count grows by at least 20 (a second of ping).
show_rising() {
	local from
	from=$(icmp_count)
	wait_for 10 "the ICMP count to rise $1" count_above $((from + 20))
	info "ICMP packets counted $1: $from -> $(icmp_count)"
}

start_bpfsup() {
	# bpfsup's log and the child's output, indented, on the terminal and in $LOG.
	"$BPFSUP" run --pin-root "$PIN_ROOT" --state-dir "$STATE_DIR" --netns "/run/netns/$NS_B" \
		-o bpf/counter.bpf.o -a "count_packets@xdp:$VETH_B" --restart always -- "$WORK/xdp-counter" \
		> >(tee -a "$LOG" | sed -u 's/^/   | /') 2>&1 &
	SUP_PID=$!
}

say "bpffs"
if [[ $(stat -f -c %T /sys/fs/bpf 2>/dev/null) != bpf_fs ]]; then
	mount -t bpf bpf /sys/fs/bpf
	info "mounted bpffs on /sys/fs/bpf"
else
	info "/sys/fs/bpf is bpffs"
fi
for ns in "$NS_A" "$NS_B"; do
	[[ -e /run/netns/$ns ]] && fail "namespace $ns exists: another demo running? (ip netns del $ns)"
done
[[ -e $PIN_ROOT ]] && fail "$PIN_ROOT exists: another demo running? (bin/bpfsup down --pin-root $PIN_ROOT --state-dir $STATE_DIR)"

say "two network namespaces, $NS_A and $NS_B, joined by veth $VETH_A <-> $VETH_B"
ip netns add "$NS_A"
ip netns add "$NS_B"
ip link add "$VETH_A" netns "$NS_A" type veth peer name "$VETH_B" netns "$NS_B"
ip -n "$NS_A" addr add "$ADDR_A/24" dev "$VETH_A"
ip -n "$NS_B" addr add "$ADDR_B/24" dev "$VETH_B"
ip -n "$NS_A" link set "$VETH_A" up
ip -n "$NS_B" link set "$VETH_B" up
info "$NS_A: $VETH_A $ADDR_A    $NS_B: $VETH_B $ADDR_B"

say "building the example child (examples/xdp-counter)"
"$GO" build -o "$WORK/xdp-counter" ./examples/xdp-counter
info "built $WORK/xdp-counter"

say "bpfsup run: count_packets on $VETH_B (XDP) in $NS_B, child xdp-counter"
info "$BPFSUP run --pin-root $PIN_ROOT --state-dir $STATE_DIR --netns /run/netns/$NS_B \\"
info "    -o bpf/counter.bpf.o -a count_packets@xdp:$VETH_B --restart always -- xdp-counter"
start_bpfsup
wait_for 20 "the child to start" has_children 1
MAP_ID=$(map_ids)
PROG_ID=$(link_field prog_id)
LINK_ID=$(link_field id)
[[ -n $PROG_ID && -n $LINK_ID ]] || fail "no link pinned at $LINK"
info "bpftool: link $LINK_ID runs program $PROG_ID; the child has map $MAP_ID"
ip -n "$NS_B" link show dev "$VETH_B" | grep -q "prog/xdp id $PROG_ID" ||
	fail "ip link does not show program $PROG_ID on $VETH_B"
info "ip link: $(ip -n "$NS_B" link show dev "$VETH_B" | grep -o "prog/xdp id $PROG_ID.*")"

say "traffic: ping from $NS_A to $ADDR_B, 20 per second"
ip netns exec "$NS_A" ping -q -i 0.05 "$ADDR_B" >/dev/null 2>&1 &
PING_PID=$!
show_rising "under bpfsup"
sleep 1.5 # a count line or two from the child

say "kill -9 the child"
CHILD=$(child_pid)
kill -9 "$CHILD"
wait_for 5 "the child to die" gone "$CHILD"
info "child $CHILD killed"
show_rising "after the child died"
wait_for 10 "bpfsup to restart the child" has_children 2
[[ $(map_ids) == "$MAP_ID" ]] || fail "the restarted child got map ids $(map_ids | xargs), the first one $MAP_ID"
info "restarted child $(child_pid) has the same map, id $MAP_ID"
[[ $(link_field prog_id) == "$PROG_ID" ]] || fail "the link's program changed"
sleep 1.5

say "kill -9 bpfsup (its child dies with it)"
CHILD=$(child_pid)
{
	kill -9 "$SUP_PID"
	wait "$SUP_PID" || true
} 2>/dev/null # not bash's "Killed" notice
SUP_PID=
wait_for 5 "the child to die with bpfsup" gone "$CHILD"
info "bpfsup and child $CHILD are gone; what bpfsup status says now:"
"$BPFSUP" status --pin-root "$PIN_ROOT" --state-dir "$STATE_DIR" | sed 's/^/   | /'
show_rising "with no bpfsup running at all"
[[ $(link_field id) == "$LINK_ID" && $(link_field prog_id) == "$PROG_ID" ]] ||
	fail "link $LINK_ID with program $PROG_ID is not pinned any more"

say "start bpfsup again: it adopts the pinned program, map and link"
start_bpfsup
wait_for 20 "the child of the new bpfsup" has_children 3
grep 'msg="object ready"' "$LOG" | tail -1 | grep -q 'adopted=2 loaded=0' ||
	fail "bpfsup did not adopt both programs without loading: $(grep 'msg="object ready"' "$LOG" | tail -1)"
[[ $(map_ids) == "$MAP_ID" ]] || fail "the new child got map ids $(map_ids | xargs), want only $MAP_ID"
[[ $(link_field id) == "$LINK_ID" && $(link_field prog_id) == "$PROG_ID" ]] ||
	fail "after the restart link $(link_field id) runs program $(link_field prog_id), want $LINK_ID and $PROG_ID"
info "adopted=2 loaded=0: same program $PROG_ID, same link $LINK_ID, same map $MAP_ID; bpfsup status:"
"$BPFSUP" status --pin-root "$PIN_ROOT" --state-dir "$STATE_DIR" | sed 's/^/   | /'
"$BPFSUP" status --pin-root "$PIN_ROOT" --state-dir "$STATE_DIR" | grep -q "program count_packets *id $PROG_ID " ||
	fail "bpfsup status does not show program count_packets with id $PROG_ID"
show_rising "under the new bpfsup"
sleep 1

say "stop bpfsup (SIGTERM) and bpfsup down"
kill -TERM "$SUP_PID"
wait "$SUP_PID" || fail "bpfsup exited $? after SIGTERM"
SUP_PID=
"$BPFSUP" down --pin-root "$PIN_ROOT" --state-dir "$STATE_DIR" | sed 's/^/   | /'
[[ -z $(ls -A "$PIN_ROOT") ]] || fail "pins left under $PIN_ROOT: $(ls -A "$PIN_ROOT")"
ip -n "$NS_B" link show dev "$VETH_B" | grep -q 'prog/xdp' && fail "an XDP program is still attached to $VETH_B"
[[ -z $(ls -A "$STATE_DIR" 2>/dev/null) ]] || fail "left in $STATE_DIR: $(ls -A "$STATE_DIR")"
info "no pins, nothing attached to $VETH_B, no lock or manifest"

say "demo passed"
