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
export PATH=/usr/local/go/bin:$PATH
. kernels/lib.sh

# Tools: qemu for the VMs, xz for 6.12's compressed modules, iproute2 (with
# its libraries) goes into the VMs.
need_tools qemu-system-x86_64=qemu-system-x86 xz=xz-utils ip=iproute2
mkdir -p "$CACHE/debs" "$CACHE/unpacked"

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
