#!/usr/bin/env bash
# Prepares a fresh Debian machine, as root, for bpfsup's tests and demo:
# installs the Debian packages they use (podman, runc and containerd for `make image`
# and the container tests) and mounts bpffs and tracefs.
# Idempotent: it installs and mounts only what is missing.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
	echo "setup: bpfsup's tests and demo need root (BPF, bpffs, network namespaces)" >&2
	exit 1
fi

export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in clang llvm libbpf-dev bpftool xdp-tools iproute2 iputils-ping python3-systemd systemd openssh-client podman runc containerd; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
	echo "setup: installing ${need[*]}"
	apt-get update -qq
	apt-get install -y -qq "${need[@]}" >/dev/null
fi

mkdir -p /sys/fs/bpf /sys/kernel/tracing
mountpoint -q /sys/fs/bpf || mount -t bpf -o mode=0700 bpf /sys/fs/bpf
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
