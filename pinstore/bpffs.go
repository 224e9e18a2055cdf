package pinstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// DefaultBPFFS is where bpffs is mounted on every distribution.
const DefaultBPFFS = "/sys/fs/bpf"

// IsBPFFS reports whether path (which must exist) is on a bpffs.
func IsBPFFS(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	return uint32(st.Type) == unix.BPF_FS_MAGIC, nil
}

// InHostMountNS reports whether this process shares PID 1's mount namespace.
func InHostMountNS() (bool, error) {
	self, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return false, fmt.Errorf("read own mount namespace: %w", err)
	}
	init, err := os.Readlink("/proc/1/ns/mnt")
	if err != nil {
		return false, fmt.Errorf("read PID 1's mount namespace: %w", err)
	}
	return self == init, nil
}

// EnsureBPFFS makes sure that root can hold pins: the root itself or its
// closest existing ancestor must be on bpffs. When root lies under
// /sys/fs/bpf and nothing is mounted there, EnsureBPFFS mounts bpffs at
// /sys/fs/bpf, as systemd and Cilium do, and reports mounted = true; it does so
// only in the host's mount namespace, because a bpffs mounted in a private one
// (as under `ip netns exec`) dies with it and takes every pin along.
func EnsureBPFFS(root string) (mounted bool, err error) {
	root = filepath.Clean(root)
	existing, err := existingAncestor(root)
	if err != nil {
		return false, err
	}

	ok, err := IsBPFFS(existing)
	if err != nil {
		return false, err
	}
	if ok {
		return false, nil
	}

	underDefault := root == DefaultBPFFS || strings.HasPrefix(root, DefaultBPFFS+"/")
	if !underDefault || (existing != DefaultBPFFS && strings.HasPrefix(existing, DefaultBPFFS+"/")) {
		return false, fmt.Errorf("pin root %s: %s is %w; point --pin-root at a directory on bpffs (mount -t bpf bpf DIR)",
			root, existing, ErrNotBPFFS)
	}

	// A process in another mount namespace may be refused PID 1's namespace
	// link (EACCES under `ip netns exec`): what cannot be shown to be the
	// host's namespace is treated as a foreign one, never mounted in.
	host, err := InHostMountNS()
	if err != nil || !host {
		unknown := ""
		if err != nil {
			unknown = fmt.Sprintf(" (as far as it can tell: %v)", err)
		}
		return false, fmt.Errorf("pin root %s: bpffs is not mounted at %s and this process is %w%s: "+
			"a bpffs mounted here would be private to this namespace and its pins would vanish with it "+
			"(this happens under `ip netns exec`); run bpfsup in the host's mount namespace and use --netns, "+
			"or point --pin-root at a bind mount of the host's bpffs", root, DefaultBPFFS, ErrForeignMountNS, unknown)
	}

	if err := os.MkdirAll(DefaultBPFFS, 0o755); err != nil {
		return false, fmt.Errorf("create %s: %w", DefaultBPFFS, err)
	}
	if err := unix.Mount("bpf", DefaultBPFFS, "bpf", 0, "mode=0700"); err != nil {
		return false, fmt.Errorf("mount bpffs at %s: %w", DefaultBPFFS, err)
	}
	return true, nil
}

// existingAncestor is path, or the closest of its ancestors that exists.
func existingAncestor(path string) (string, error) {
	existing := filepath.Clean(path)
	for {
		if _, err := os.Stat(existing); err == nil {
			return existing, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("pin root %s: %w", path, err)
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			return existing, nil
		}
		existing = parent
	}
}

// MountPoint is where the bpffs that holds root is mounted: the highest
// directory of root's closest existing ancestor that is on the same bpffs,
// or DefaultBPFFS when root lies under it and nothing is mounted there.
// It is an error when root can be on no bpffs.
func MountPoint(root string) (string, error) {
	root = filepath.Clean(root)
	dir, err := existingAncestor(root)
	if err != nil {
		return "", err
	}
	var st unix.Stat_t
	if ok, err := IsBPFFS(dir); err != nil {
		return "", err
	} else if !ok {
		if root == DefaultBPFFS || strings.HasPrefix(root, DefaultBPFFS+"/") {
			return DefaultBPFFS, nil
		}
		return "", fmt.Errorf("pin root %s: %s is %w", root, dir, ErrNotBPFFS)
	}
	if err := unix.Stat(dir, &st); err != nil {
		return "", fmt.Errorf("stat %s: %w", dir, err)
	}
	for dir != "/" {
		parent := filepath.Dir(dir)
		var pst unix.Stat_t
		if err := unix.Stat(parent, &pst); err != nil {
			return "", fmt.Errorf("stat %s: %w", parent, err)
		}
		if pst.Dev != st.Dev {
			break
		}
		dir = parent
	}
	return dir, nil
}
