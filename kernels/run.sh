#!/usr/bin/env bash
# `make kernels`: the test suite in VMs on Debian's 6.1 and 6.12 kernels, and on
# request (KERNELS="5.10 sid") bullseye's 5.10 and sid's newest (see
# docs/kernels.md). Fetches what it needs from Debian's packages into a cache
# that outlives the run, then hands over to kernels/cmd/vmtest, which builds
# the static test binaries and the initramfs, boots the VMs and prints the
# result table. Arguments go to vmtest, e.g.:
#
#   ./kernels/run.sh -run 'TestTC' ./hooks        # a subset
#   KERNELS=6.1 ./kernels/run.sh                  # one kernel
#   KERNELS="5.10 sid" ./kernels/run.sh           # the opt-in oldest and newest
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

# The opt-in series 5.10 (bullseye) and sid (Debian's newest kernel, 7.2 in
# December 2026) come from suites the host's sources do not name: an apt
# sources file of this script's own, with its own lists, under the cache
# (the host's apt configuration is never touched). Their kernel is picked by
# package name, linux-image-cloud-amd64 of the suite, never by a pinned
# version, and the run prints which it took.
OWN_APT="$CACHE/apt"
own_apt_opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$OWN_APT/sources"
	-o "Dir::State::Lists=$OWN_APT/lists" -o "Dir::Cache=$OWN_APT/cache")
own_updated=0
own_update() {
	if [ "$own_updated" = 0 ]; then
		mkdir -p "$OWN_APT/sources" "$OWN_APT/lists/partial" "$OWN_APT/cache/archives/partial"
		cat >"$OWN_APT/sources/bpfsup-kernels.sources" <<-EOF
			Types: deb
			URIs: http://deb.debian.org/debian
			Suites: bullseye sid
			Components: main
			Architectures: amd64
			Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
		EOF
		apt-get "${own_apt_opts[@]}" update -qq
		own_updated=1
	fi
}

# suite_kernel SUITE: the versioned kernel package linux-image-cloud-amd64 of
# SUITE depends on ("linux-image-5.10.0-32-cloud-amd64").
suite_kernel() {
	local version
	version=$(apt-cache "${own_apt_opts[@]}" madison linux-image-cloud-amd64 | awk -v s="$1/main" '$0 ~ s {print $3; exit}')
	[ -n "$version" ] || return 0
	apt-cache "${own_apt_opts[@]}" show "linux-image-cloud-amd64=$version" |
		sed -n 's/^Depends:.*\(linux-image-[0-9][^ ,]*-cloud-amd64\).*/\1/p' | head -1
}

# fetch_own DIR PACKAGE...: download the packages from the own lists and
# unpack them all into DIR, once.
fetch_own() {
	local dir=$1 pkg
	shift
	if [ ! -f "$dir/.complete" ]; then
		rm -rf "$dir"
		mkdir -p "$dir"
		for pkg in "$@"; do
			(cd "$CACHE/debs" && rm -f "${pkg}"_*.deb && apt-get "${own_apt_opts[@]}" download -qq "$pkg" 2>/dev/null)
			dpkg-deb -x "$CACHE/debs/${pkg}"_*.deb "$dir"
		done
		touch "$dir/.complete"
		echo "kernels: fetched $*" >&2
	fi
}

args=()
for series in $SERIES; do
	case $series in
	6.1) pattern='^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$' ;;
	6.12) pattern='^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$' ;;
	5.10 | sid) pattern= ;;
	*)
		echo "kernels: unknown series $series (known: 6.1 6.12, and opt-in 5.10 sid)" >&2
		exit 2
		;;
	esac
	# The cached kernel of a series is used as long as it is there, so that
	# runs repeat without the network; KERNELS_REFRESH=1 takes the newest.
	link="$CACHE/$series"
	if [ "$REFRESH" != 0 ] || [ ! -f "$link/.complete" ]; then
		if [ -n "$pattern" ]; then
			pkg=$(newest_package "$pattern")
			if [ -z "$pkg" ]; then
				echo "kernels: no package matches $pattern in Debian's lists" >&2
				exit 1
			fi
			dir=$(fetch "$pkg")
		else
			own_update
			suite=bullseye
			[ "$series" = sid ] && suite=sid
			image=$(suite_kernel "$suite")
			if [ -z "$image" ]; then
				echo "kernels: no linux-image-cloud-amd64 in $suite" >&2
				exit 1
			fi
			dir="$CACHE/unpacked/$image"
			if [ "$suite" = bullseye ]; then
				fetch_own "$dir" "$image-unsigned"
			else
				# sid splits the kernel: binary (unsigned), modules, base.
				v=${image#linux-image-}
				fetch_own "$dir" "linux-binary-unsigned-$v" "linux-modules-$v" "linux-base-$v"
			fi
		fi
		ln -sfn "$dir" "$link"
	fi
	echo "kernels: series $series is $(basename "$(readlink -f "$link")")" >&2
	args+=(-kernel "$series=$(readlink -f "$link")")
done

bb="$CACHE/unpacked/busybox-static"
if [ ! -x "$bb/bin/busybox" ]; then
	fetch busybox-static >/dev/null
fi
args+=(-busybox "$bb/bin/busybox")

go build -o "$CACHE/vmtest" ./kernels/cmd/vmtest
exec "$CACHE/vmtest" "${args[@]}" "$@"
