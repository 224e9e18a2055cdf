#!/usr/bin/env bash
# `make kernels`: the test suite in VMs on Debian's 6.1 and 6.12 kernels (see
# docs/kernels.md). Fetches what it needs from Debian's packages into a cache
# that outlives the run, then hands over to kernels/cmd/vmtest, which builds
# the static test binaries and the initramfs, boots the VMs and prints the
# result table. Arguments go to vmtest, e.g.:
#
#   ./kernels/run.sh -run 'TestTC' ./hooks        # a subset
#   KERNELS=6.1 ./kernels/run.sh                  # one kernel
#   KERNELS_REFRESH=1 ./kernels/run.sh            # fetch the newest kernels
#
# Kernel packages are only downloaded and unpacked (dpkg-deb -x), never
# installed: a kernel package's hooks would act on this machine's boot.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${BPFSUP_KERNEL_CACHE:-/var/cache/bpfsup-kernels}
SERIES=${KERNELS:-"6.1 6.12"}
REFRESH=${KERNELS_REFRESH:-0}
export DEBIAN_FRONTEND=noninteractive
export PATH=/usr/local/go/bin:$PATH

updated=0
apt_update() {
	if [ "$updated" = 0 ]; then
		apt-get update -qq
		updated=1
	fi
}

# Tools: qemu for the VMs, xz for 6.12's compressed modules, iproute2 (with
# its libraries) goes into the VMs.
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v xz >/dev/null || need+=(xz-utils)
command -v ip >/dev/null || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
	apt_update
	echo "kernels: installing ${need[*]}"
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

mkdir -p "$CACHE/debs" "$CACHE/unpacked"

# newest_package PATTERN: the highest version of the packages whose names
# match the extended regexp PATTERN.
newest_package() {
	local name
	name=$(apt-cache pkgnames linux-image- 2>/dev/null | grep -E "$1" | sort -V | tail -1 || true)
	if [ -z "$name" ]; then
		apt_update
		name=$(apt-cache pkgnames linux-image- | grep -E "$1" | sort -V | tail -1 || true)
	fi
	echo "$name"
}

# fetch PACKAGE: download and unpack it into the cache, once; prints the
# directory it is unpacked in.
fetch() {
	local pkg=$1 dir="$CACHE/unpacked/$1"
	if [ ! -f "$dir/.complete" ]; then
		(cd "$CACHE/debs" && rm -f "${pkg}"_*.deb && apt-get download -qq "$pkg" 2>/dev/null) ||
			{ apt_update; (cd "$CACHE/debs" && apt-get download -qq "$pkg"); }
		rm -rf "$dir"
		mkdir -p "$dir"
		dpkg-deb -x "$CACHE/debs/${pkg}"_*.deb "$dir"
		touch "$dir/.complete"
		echo "kernels: fetched $pkg" >&2
	fi
	echo "$dir"
}

args=()
for series in $SERIES; do
	case $series in
	6.1) pattern='^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$' ;;
	6.12) pattern='^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$' ;;
	*)
		echo "kernels: unknown series $series (known: 6.1 6.12)" >&2
		exit 2
		;;
	esac
	# The cached kernel of a series is used as long as it is there, so that
	# runs repeat without the network; KERNELS_REFRESH=1 takes the newest.
	link="$CACHE/$series"
	if [ "$REFRESH" != 0 ] || [ ! -f "$link/.complete" ]; then
		pkg=$(newest_package "$pattern")
		if [ -z "$pkg" ]; then
			echo "kernels: no package matches $pattern in Debian's lists" >&2
			exit 1
		fi
		dir=$(fetch "$pkg")
		ln -sfn "$dir" "$link"
	fi
	args+=(-kernel "$series=$(readlink -f "$link")")
done

bb="$CACHE/unpacked/busybox-static"
if [ ! -x "$bb/bin/busybox" ]; then
	fetch busybox-static >/dev/null
fi
args+=(-busybox "$bb/bin/busybox")

go build -o "$CACHE/vmtest" ./kernels/cmd/vmtest
exec "$CACHE/vmtest" "${args[@]}" "$@"
