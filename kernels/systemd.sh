#!/usr/bin/env bash
# `make systemd`: bpfsup under systemd as PID 1, in VMs under qemu's software
# emulation, on Debian 12 (bookworm: systemd 252, Linux 6.1) and Debian sid
# (systemd 262, Linux 7.2). Each VM boots once: systemd installs bpfsup from
# the .deb (`make deb`) with dpkg and runs every case (kernels/systemdvm),
# and the host prints a table: case, 252, 262.
#
# What it builds is cached outside the checkout, in $CACHE
# (/var/cache/bpfsup-systemd): per suite, a root file system made by
# mmdebstrap (minbase, no docs) as an uncompressed cpio archive, and the
# suite's kernel, unpacked. A root file system is made again when its inputs
# (suite, packages, options: the key below) change, or with
# SYSTEMD_REFRESH=1, which also takes the newest kernel.
#
#   ./kernels/systemd.sh                    # both
#   SUITES=bookworm ./kernels/systemd.sh    # one
#   ./kernels/systemd.sh -run 'Reload'      # a subset of the cases
#
# Nothing here starts systemd on this machine: mmdebstrap runs the packages'
# maintainer scripts in a chroot, where no init runs, and systemd only ever
# runs as PID 1 inside qemu.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."

CACHE=${BPFSUP_SYSTEMD_CACHE:-/var/cache/bpfsup-systemd}
SUITES=${SUITES:-"bookworm sid"}
REFRESH=${SYSTEMD_REFRESH:-0}
MIRROR=http://deb.debian.org/debian
export PATH=/usr/local/go/bin:$PATH
. kernels/lib.sh

need_tools qemu-system-x86_64=qemu-system-x86 xz=xz-utils mmdebstrap=mmdebstrap cpio=cpio dpkg-deb=dpkg
mkdir -p "$CACHE"

# What goes into the VMs besides minbase: systemd (PID 1, systemctl,
# systemd-analyze), iproute2 (namespaces and veths for the traffic checks),
# procps (/bin/kill, which the unit's ExecReload= runs), python3-systemd (the
# socket-activated application of case 7).
PACKAGES=systemd,iproute2,procps,python3-systemd
# No documentation, manuals or translations; bpfsup's own documentation is
# kept, for the case that reads the example configuration the package ships.
DPKGOPTS=(
	--dpkgopt='path-exclude=/usr/share/doc/*'
	--dpkgopt='path-include=/usr/share/doc/bpfsup/*'
	--dpkgopt='path-exclude=/usr/share/man/*'
	--dpkgopt='path-exclude=/usr/share/info/*'
	--dpkgopt='path-exclude=/usr/share/locale/*'
	--dpkgopt='path-exclude=/usr/share/zoneinfo/*'
)
# Acquire::Check-Valid-Until: the archive this machine reaches serves sid
# with a Release file past its Valid-Until date (seen on 2026-12-06), which
# apt refuses by default; its signature is still checked.
ROOTFS_KEY="v1 minbase $PACKAGES ${DPKGOPTS[*]}"

# rootfs SUITE: the suite's root file system as a cpio archive, made when
# missing or when its key changed; prints its path.
rootfs() {
	local suite=$1 dir="$CACHE/$1" key="$ROOTFS_KEY $1"
	mkdir -p "$dir"
	if [ "$REFRESH" = 0 ] && [ -f "$dir/rootfs.cpio" ] && [ "$(cat "$dir/rootfs.key" 2>/dev/null)" = "$key" ]; then
		echo "$dir/rootfs.cpio"
		return
	fi
	local began=$SECONDS tree="$dir/root.tmp"
	rm -rf "$tree" "$dir/rootfs.cpio" "$dir/rootfs.key"
	echo "systemd: mmdebstrap $suite (minbase + $PACKAGES)" >&2
	mmdebstrap --quiet --variant=minbase --include="$PACKAGES" "${DPKGOPTS[@]}" \
		--aptopt='Acquire::Retries "3"' --aptopt='Acquire::Check-Valid-Until "false"' "$suite" "$tree" "$MIRROR" >&2
	# What a booted system does not need: apt's caches and lists.
	rm -rf "$tree"/var/cache/apt/* "$tree"/var/lib/apt/lists/*
	(cd "$tree" && find . -xdev -print0 | cpio --null --quiet -o -H newc) >"$dir/rootfs.cpio.tmp"
	mv "$dir/rootfs.cpio.tmp" "$dir/rootfs.cpio"
	echo "$key" >"$dir/rootfs.key"
	rm -rf "$tree"
	echo "systemd: $suite root file system: $(du -h "$dir/rootfs.cpio" | cut -f1) in $((SECONDS - began)) s" >&2
	echo "$dir/rootfs.cpio"
}

# kernel SUITE: the suite's cloud kernel, unpacked; prints its directory.
# bookworm's comes from this machine's lists (as in `make kernels`); sid
# splits its kernel into linux-binary-unsigned-* (vmlinuz), linux-modules-*
# and linux-base-* (config, modules.builtin), unpacked into one directory.
kernel() {
	local suite=$1 link="$CACHE/$1/kernel" pkgs=() p dir
	if [ "$REFRESH" = 0 ] && [ -f "$link/.complete-kernel" ]; then
		readlink -f "$link"
		return
	fi
	case $suite in
	bookworm)
		APT_OPTS=()
		pkgs=("$(newest_package '^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$')")
		;;
	sid)
		apt_suite sid
		p=$(newest_package '^linux-binary-unsigned-[0-9.]+\+deb[0-9]+-cloud-amd64$')
		local v=${p#linux-binary-unsigned-}
		pkgs=("$p" "linux-modules-$v" "linux-base-$v")
		;;
	*)
		echo "systemd: unknown suite $suite (known: bookworm sid)" >&2
		exit 2
		;;
	esac
	if [ -z "${pkgs[0]}" ]; then
		echo "systemd: no kernel package found for $suite" >&2
		exit 1
	fi
	dir="$CACHE/unpacked/${pkgs[0]}"
	for p in "${pkgs[@]}"; do
		fetch "$p" "$dir" >/dev/null
	done
	touch "$dir/.complete-kernel"
	ln -sfn "$dir" "$link"
	echo "$dir"
}

args=()
for suite in $SUITES; do
	began=$SECONDS
	r=$(rootfs "$suite")
	k=$(kernel "$suite")
	echo "systemd: $suite ready in $((SECONDS - began)) s: $r, kernel $k" >&2
	args+=(-systemd "$suite=$k=$r")
done

# SYSTEMD_PREPARE=1: make the images and fetch the kernels, boot nothing.
if [ "${SYSTEMD_PREPARE:-0}" != 0 ]; then
	exit 0
fi

# The cases build only with their tag, which `go vet ./...` does not set.
go vet -tags systemdvm ./kernels/systemdvm
make deb LINTIAN=0 >&2
deb=$(ls -t bin/bpfsup_*_amd64.deb | head -1)
go build -o "$CACHE/vmtest" ./kernels/cmd/vmtest
exec "$CACHE/vmtest" -deb "$deb" "${args[@]}" "$@"
