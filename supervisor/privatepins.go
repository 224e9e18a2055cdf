package supervisor

import (
	"fmt"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/environ"
	"github.com/bpfsup/bpfsup/pinstore"
)

// With pins = false bpfsup pins nothing on the system's bpffs, yet every
// step of an install still works on pins (staging, renames, adoption): they
// are made on a bpffs of bpfsup's own, mounted over the system's bpffs in a
// mount namespace of bpfsup's own that nothing else sees and that dies with
// bpfsup (and its application, which shares it). Systemd's fd store is then
// what keeps the objects: at the next start they are pinned again on a new
// private bpffs from the fds systemd hands back (converge.Restore).
//
// A mount namespace is per thread until an execve: EnterPrivateBPFFS
// unshares it on one locked thread, mounts there, and re-executes bpfsup
// from that thread, which makes the namespace the whole process's and keeps
// its pid (what systemd knows as the main pid). EnvPrivateBPFFS, the
// namespace's inode, tells the new program that it is inside; a self-upgrade
// (SIGUSR2) re-executes into the same namespace and so does not enter again.

// EnvPrivateBPFFS is set, to the inode of bpfsup's private mount namespace,
// once bpfsup runs in it.
const EnvPrivateBPFFS = "BPFSUP_PRIVATE_BPFFS"

// InPrivateBPFFS reports whether bpfsup already runs in its private mount
// namespace.
func InPrivateBPFFS() bool {
	v := os.Getenv(EnvPrivateBPFFS)
	return v != "" && v == mountNSInode("/proc/self/ns/mnt")
}

func mountNSInode(path string) string {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return ""
	}
	return strconv.FormatUint(st.Ino, 10)
}

// EnterPrivateBPFFS moves bpfsup into a mount namespace of its own with a
// fresh bpffs mounted where the one holding pinRoot is, and re-executes it
// there with the same arguments and environment: it returns only on error,
// or at once when bpfsup already runs there. The namespace's mounts are
// slaves of the system's, so a network namespace made later (a mount in
// /run/netns) is seen, and nothing mounted inside leaks out.
func EnterPrivateBPFFS(pinRoot string) error {
	if InPrivateBPFFS() {
		return nil
	}
	mp, err := pinstore.MountPoint(pinRoot)
	if err != nil {
		return fmt.Errorf("pins = false: %w", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("pins = false: cannot find own executable to re-execute in a private mount namespace: %w", err)
	}
	// Never unlocked: on success the thread becomes the new program's only
	// one; on failure it is in another namespace than the rest of the
	// process and must not run anything else (bpfsup exits with the error).
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("pins = false: unshare the mount namespace (needs CAP_SYS_ADMIN, and a unit without RestrictNamespaces= of mnt): %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("pins = false: make the private mount namespace a slave: %w", err)
	}
	if err := unix.Mount("bpf", mp, "bpf", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700"); err != nil {
		return fmt.Errorf("pins = false: mount a private bpffs at %s: %w", mp, err)
	}
	env := append(environ.Without(os.Environ(), EnvPrivateBPFFS), EnvPrivateBPFFS+"="+mountNSInode("/proc/thread-self/ns/mnt"))
	if err := unix.Exec(exe, os.Args, env); err != nil {
		return fmt.Errorf("pins = false: re-execute %s in the private mount namespace: %w", exe, err)
	}
	return nil
}
