package testutil

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

func TestRequireRoot(t *testing.T) {
	RequireRoot(t)
	if os.Geteuid() != 0 {
		t.Fatal("RequireRoot did not skip a test running as non-root")
	}
}

func TestMustBPFFS(t *testing.T) {
	RequireRoot(t)
	path := MustBPFFS(t)
	if ok, err := isBPFFS(path); err != nil || !ok {
		t.Fatalf("%s is not bpffs (err: %v)", path, err)
	}
}

// mountChildEnv marks the copy of the test binary that
// TestMustBPFFSMountsWhenMissing starts where no bpffs is mounted.
const mountChildEnv = "BPFSUP_TESTUTIL_MOUNT_CHILD"

// `ip netns exec` gives its command a private mount namespace with a fresh
// /sys, where /sys/fs/bpf is not bpffs: MustBPFFS has to mount it there, and
// the host's mount is untouched.
func TestMustBPFFSMountsWhenMissing(t *testing.T) {
	if os.Getenv(mountChildEnv) != "" {
		if ok, err := isBPFFS(BPFFSPath); err != nil || ok {
			t.Fatalf("child: want no bpffs on %s to start with (err: %v)", BPFFSPath, err)
		}
		MustBPFFS(t)
		return
	}
	RequireRoot(t)
	ns := MustNetns(t, "mount")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns.Name, exe,
		"-test.run=^TestMustBPFFSMountsWhenMissing$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), mountChildEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "mounted bpffs on "+BPFFSPath) {
		t.Fatalf("child did not say it mounted bpffs:\n%s", out)
	}
	if ok, err := isBPFFS(BPFFSPath); err != nil || !ok {
		t.Fatalf("host's %s is no longer bpffs (err: %v)", BPFFSPath, err)
	}
}

func TestMustPinRoot(t *testing.T) {
	RequireRoot(t)
	var root, other string
	t.Run("use", func(t *testing.T) {
		root = MustPinRoot(t)
		other = MustPinRoot(t)
		if root == other {
			t.Fatalf("two pin roots share the path %s", root)
		}
		if filepath.Dir(root) != BPFFSPath || !strings.HasPrefix(filepath.Base(root), "bpfsup-test-") || strings.Contains(root, ".") {
			t.Fatalf("pin root %s: want %s/bpfsup-test-<hex>, no dot", root, BPFFSPath)
		}
		if ok, err := isBPFFS(root); err != nil || !ok {
			t.Fatalf("%s is not on bpffs (err: %v)", root, err)
		}
		if fi, err := os.Stat(root); err != nil || fi.Mode().Perm() != 0o700 {
			t.Fatalf("pin root mode: %v (err: %v), want 0700", fi.Mode(), err)
		}

		// Something for Cleanup to remove: a map pinned two levels down.
		maps := filepath.Join(root, "obj", "maps")
		if err := os.MkdirAll(maps, 0o700); err != nil {
			t.Fatal(err)
		}
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		if err := m.Pin(filepath.Join(maps, "counters")); err != nil {
			t.Fatal(err)
		}
	})
	for _, dir := range []string{root, other} {
		if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("pin root %s left behind (lstat: %v)", dir, err)
		}
	}
}

func TestMustStateDir(t *testing.T) {
	var dir string
	t.Run("use", func(t *testing.T) {
		dir = MustStateDir(t)
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
			t.Fatalf("state dir %s: %v (err: %v), want a 0700 directory", dir, fi.Mode(), err)
		}
		// Room for a control socket name within sun_path's 107 bytes.
		if len(dir) > 64 {
			t.Fatalf("state dir path is %d bytes long: %s", len(dir), dir)
		}
		if err := os.WriteFile(filepath.Join(dir, "lock"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	})
	if _, err := os.Lstat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("state dir %s left behind (lstat: %v)", dir, err)
	}
}
