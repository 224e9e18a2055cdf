#!/usr/bin/env bash
# bench/run.sh: `make bench`. Measures bpfsup against bpftool, xdp-loader, a
# naive detach-and-attach and a bare fork+exec, and writes report.md,
# results.json and ready.svg to bench/results/. Takes about 5-10 minutes.
#
# Needs root and a kernel with BPF. Installs the peers (bpftool, xdp-tools)
# and clang from Debian's packages when missing, and mounts bpffs when it is
# not. Everything runs in network namespaces of its own, never on the host's
# interfaces. Arguments are passed to bpfsupbench (e.g. -quick, -sections
# ready,upgrade, -reps 7).
#
# Not part of `make test`: CI does not run it.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$(pwd)

if [ "$(id -u)" != 0 ]; then
	echo "bench: needs root (BPF, network namespaces, bpffs)" >&2
	exit 1
fi

# The peers and the compiler for the generated objects, from Debian.
missing=()
command -v bpftool >/dev/null 2>&1 || missing+=(bpftool)
command -v xdp-loader >/dev/null 2>&1 || missing+=(xdp-tools)
command -v clang >/dev/null 2>&1 || missing+=(clang)
command -v nsenter >/dev/null 2>&1 || missing+=(util-linux)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
	echo "bench: installing ${missing[*]}" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# bpffs, as bpfsup would mount it.
if ! mountpoint -q /sys/fs/bpf; then
	echo "bench: mounting bpffs at /sys/fs/bpf" >&2
	mount -t bpf bpf /sys/fs/bpf
fi
if [ "$(stat -f -c %T /sys/fs/bpf)" != bpf_fs ]; then
	echo "bench: /sys/fs/bpf is not bpffs (under 'ip netns exec'? run in the host's mount namespace)" >&2
	exit 1
fi

[ -x bin/bpfsup ] || CGO_ENABLED=0 go build -o bin/bpfsup ./cmd/bpfsup

# The run's id names its namespaces (bpfsupbench-<id>-*) and pins
# (/sys/fs/bpf/bpfsupbench-<id>), so that cleanup here touches nothing else.
id=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
work=$(mktemp -d /tmp/bpfsupbench.XXXXXX)
# libxdp makes /sys/fs/bpf/xdp for its dispatcher; remove it again if it was
# not there and nothing else is in it.
xdp_dir_existed=0
[ -e /sys/fs/bpf/xdp ] && xdp_dir_existed=1
pid=

cleanup() {
	trap - EXIT INT TERM HUP
	if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		# bpfsupbench removes its namespaces, pins and processes itself.
		kill -TERM "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	fi
	# In case it was killed outright: whatever carries this run's id.
	for ns in $(ip netns list | awk '{print $1}' | grep "^bpfsupbench-$id-" || true); do
		ip netns del "$ns" || true
	done
	rm -rf "/sys/fs/bpf/bpfsupbench-$id"
	if [ "$xdp_dir_existed" = 0 ]; then
		rmdir /sys/fs/bpf/xdp 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

echo "bench: building" >&2
go build -o "$work/bpfsupbench" ./bench/cmd/bpfsupbench
CGO_ENABLED=0 go build -o "$work/gohello" ./bench/cmd/gohello
# Built as bin/bpfsup is (make build): static, not stripped.
CGO_ENABLED=0 go build -o "$work/depsfloor" ./bench/cmd/depsfloor
CGO_ENABLED=0 go build -o "$work/pinfloor" ./bench/cmd/pinfloor
clang -O2 -Wall -o "$work/benchchild" bench/benchchild.c
# A copy: a `make build` elsewhere must not swap the binary mid-run.
cp bin/bpfsup "$work/bpfsup"

# In the background, so that a signal to this script reaches the trap at
# once and is passed on.
"$work/bpfsupbench" -id "$id" -work "$work" -out "$repo/bench/results" \
	-bpfsup "$work/bpfsup" -child "$work/benchchild" -gohello "$work/gohello" \
	-depsfloor "$work/depsfloor" -pinfloor "$work/pinfloor" "$@" &
pid=$!
set +e
wait "$pid"
rc=$?
set -e
pid=
exit $rc
