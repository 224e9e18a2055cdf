#!/usr/bin/env bash
# The test suite in VMs on Debian's kernels (docs/kernels.md): KERNELS names
# the series, "6.1 6.12" (bookworm's, and 6.12 from bookworm-backports) by
# default, or bullseye's 5.10 and sid's newest ("5.10 sid"). `make kernels`
# runs every package on 5.10 and sid and a core on 6.1 and 6.12. Fetches what
# it needs from Debian's packages into a cache that outlives the run, then
# hands over to kernels/cmd/vmtest, which builds the static test binaries and
# the initramfs, boots the VMs and prints the result table. Arguments go to
# vmtest, e.g.:
#
#   ./kernels/run.sh -run 'TestTC' ./hooks        # a subset
#   KERNELS=6.1 ./kernels/run.sh                  # one kernel
#   KERNELS="5.10 sid" ./kernels/run.sh           # the oldest and newest
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

# The opt-in series come from suites this machine's sources do not name, each
# through apt lists of its own (apt_suite): 5.10 is bullseye's kernel, sid is
# Debian's newest (7.2 in December 2026), which sid splits into
# linux-binary-unsigned-* (vmlinuz), linux-modules-* and linux-base-* (config,
# modules.builtin), unpacked into one directory. Each is picked by package
# name, never a pinned version, and the run says which it took.
args=()
for series in $SERIES; do
	APT_OPTS=()
	apt_updated=0
	case $series in
	6.1) pattern='^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$' ;;
	6.12) pattern='^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$' ;;
	5.10) pattern='^linux-image-5\.10\.0-[0-9]+-cloud-amd64-unsigned$' ;;
	sid) pattern='^linux-binary-unsigned-[0-9.]+\+deb[0-9]+-cloud-amd64$' ;;
	*)
		echo "kernels: unknown series $series (known: 6.1 6.12, and opt-in 5.10 sid)" >&2
		exit 2
		;;
	esac
	# The cached kernel of a series is used as long as it is there, so that
	# runs repeat without the network; KERNELS_REFRESH=1 takes the newest.
	link="$CACHE/$series"
	if [ "$REFRESH" != 0 ] || [ ! -f "$link/.complete" ]; then
		case $series in
		5.10) apt_suite bullseye ;;
		sid) apt_suite sid ;;
		esac
		pkg=$(newest_package "$pattern")
		if [ -z "$pkg" ]; then
			echo "kernels: no package matches $pattern in Debian's lists" >&2
			exit 1
		fi
		dir=$(fetch "$pkg")
		if [ "$series" = sid ]; then
			v=${pkg#linux-binary-unsigned-}
			fetch "linux-modules-$v" "$dir" >/dev/null
			fetch "linux-base-$v" "$dir" >/dev/null
		fi
		ln -sfn "$dir" "$link"
	fi
	echo "kernels: series $series is $(basename "$(readlink -f "$link")")" >&2
	args+=(-kernel "$series=$(readlink -f "$link")")
done
APT_OPTS=()

bb="$CACHE/unpacked/busybox-static"
if [ ! -x "$bb/bin/busybox" ]; then
	fetch busybox-static >/dev/null
fi
args+=(-busybox "$bb/bin/busybox")

go build -o "$CACHE/vmtest" ./kernels/cmd/vmtest
exec "$CACHE/vmtest" "${args[@]}" "$@"
