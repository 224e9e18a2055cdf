package testutil

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// BPFFSPath is where bpffs is mounted on the host, and where MustBPFFS
// mounts it when it is not.
const BPFFSPath = "/sys/fs/bpf"

// RequireRoot skips the test, saying why, unless it runs as root. Tests that
// load BPF programs, pin to bpffs or create namespaces call it first.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if euid := os.Geteuid(); euid != 0 {
		tb.Skipf("needs root (euid is %d) for BPF, bpffs and network namespaces; run as root or with `go test -exec sudo`", euid)
	}
}

// bpffsMu serialises the check-then-mount in MustBPFFS within the process.
var bpffsMu sync.Mutex

// MustBPFFS makes sure BPFFSPath is a bpffs mount, mounting one (mode 0700,
// as systemd does) if it is not, and returns BPFFSPath. A bpffs it mounted
// stays mounted after the test, as bpfsup itself leaves it.
func MustBPFFS(tb testing.TB) string {
	tb.Helper()
	bpffsMu.Lock()
	defer bpffsMu.Unlock()

	ok, err := isBPFFS(BPFFSPath)
	if err != nil {
		tb.Fatalf("check bpffs: %v", err)
	}
	if ok {
		return BPFFSPath
	}
	if err := unix.Mount("bpf", BPFFSPath, "bpf", 0, "mode=0700"); err != nil {
		tb.Fatalf("mount bpffs on %s: %v", BPFFSPath, err)
	}
	msg := fmt.Sprintf("mounted bpffs on %s, which was not mounted", BPFFSPath)
	if !inHostMountNamespace() {
		// See DESIGN "Namespaces": such an instance is private to this mount
		// namespace and its pins die with it.
		msg += " (in a private mount namespace: the host's bpffs does not see these pins)"
	}
	tb.Log(msg)
	if ok, err := isBPFFS(BPFFSPath); err != nil || !ok {
		tb.Fatalf("%s is still not bpffs after mounting it (err: %v)", BPFFSPath, err)
	}
	return BPFFSPath
}

// isBPFFS reports whether path is on bpffs, by its statfs magic.
func isBPFFS(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Type == unix.BPF_FS_MAGIC, nil
}

// inHostMountNamespace reports whether this process shares PID 1's mount
// namespace. When that cannot be told, it says yes: it only decides a hint.
func inHostMountNamespace() bool {
	self, err1 := os.Readlink("/proc/self/ns/mnt")
	pid1, err2 := os.Readlink("/proc/1/ns/mnt")
	return err1 != nil || err2 != nil || self == pid1
}

// MustPinRoot creates a private pin root directory on bpffs,
// BPFFSPath/bpfsup-test-<16 hex digits> (mode 0700; no '.' in the name, which
// bpffs refuses), and returns its path. Cleanup removes it with everything
// pinned below it.
func MustPinRoot(tb testing.TB) string {
	tb.Helper()
	bpffs := MustBPFFS(tb)
	dir := filepath.Join(bpffs, "bpfsup-test-"+randomHex(8))
	if err := os.Mkdir(dir, 0o700); err != nil {
		tb.Fatalf("create pin root: %v", err)
	}
	tb.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			tb.Errorf("remove pin root: %v", err)
		}
	})
	return dir
}

// MustStateDir creates a private state directory (mode 0700) and returns its
// path; Cleanup removes it. Unlike tb.TempDir, whose path contains the test's
// name, the path is short (/tmp/bpfsup-state-<digits>), so that unix sockets
// inside it stay within the 107-byte limit of sun_path.
func MustStateDir(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "bpfsup-state-")
	if err != nil {
		tb.Fatalf("create state dir: %v", err)
	}
	tb.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			tb.Errorf("remove state dir: %v", err)
		}
	})
	return dir
}

// randomHex returns n random bytes as 2n lowercase hex digits.
func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b) // Never fails: crypto/rand crashes the program instead.
	return hex.EncodeToString(b)
}
