package pinstore

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

func TestIsBPFFS(t *testing.T) {
	testutil.RequireRoot(t)
	root := testutil.MustPinRoot(t)
	for path, want := range map[string]bool{
		testutil.MustBPFFS(t): true,
		root:                  true,
		t.TempDir():           false,
		"/proc":               false,
	} {
		got, err := IsBPFFS(path)
		if err != nil || got != want {
			t.Errorf("IsBPFFS(%s) = %v, %v; want %v", path, got, err, want)
		}
	}
	missing := filepath.Join(root, "missing")
	if _, err := IsBPFFS(missing); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("IsBPFFS(%s) = %v, want ErrNotExist naming the path", missing, err)
	}
}

// mustTmpfs mounts a fresh tmpfs on dir, unmounted when the test ends.
func mustTmpfs(tb testing.TB, dir string) {
	tb.Helper()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m,mode=0700"); err != nil {
		tb.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	tb.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			tb.Errorf("unmount tmpfs from %s: %v", dir, err)
		}
	})
}

func TestEnsureBPFFS(t *testing.T) {
	testutil.RequireRoot(t)
	root := testutil.MustPinRoot(t)

	// On bpffs, existing or not yet created: nothing to do.
	for _, dir := range []string{root, filepath.Join(root, "not", "yet")} {
		mounted, err := EnsureBPFFS(dir)
		if mounted || err != nil {
			t.Errorf("EnsureBPFFS(%s) = %v, %v; want false, nil", dir, mounted, err)
		}
		if dir != root && Exists(dir) {
			t.Errorf("EnsureBPFFS created %s", dir)
		}
	}

	// A tmpfs is no bpffs, and bpfsup does not mount one anywhere but at
	// /sys/fs/bpf.
	tmp := t.TempDir()
	mustTmpfs(t, tmp)
	for _, dir := range []string{tmp, filepath.Join(tmp, "pins", "fw")} {
		mounted, err := EnsureBPFFS(dir)
		if mounted || !errors.Is(err, ErrNotBPFFS) {
			t.Fatalf("EnsureBPFFS(%s) = %v, %v; want ErrNotBPFFS", dir, mounted, err)
		}
		if msg := err.Error(); !strings.Contains(msg, "pin root "+dir+":") || !strings.Contains(msg, tmp+" is not on bpffs") {
			t.Errorf("EnsureBPFFS(%s): %q does not name the pin root and the directory", dir, msg)
		}
	}
	if ok, _ := IsBPFFS(tmp); ok {
		t.Fatalf("%s became bpffs", tmp)
	}

	// Something else mounted below /sys/fs/bpf, where bpffs is mounted:
	// an error too, never a second bpffs.
	nested := filepath.Join(root, "nested")
	if err := os.Mkdir(nested, 0o700); err != nil {
		t.Fatal(err)
	}
	mustTmpfs(t, nested)
	mounted, err := EnsureBPFFS(filepath.Join(nested, "pins"))
	if mounted || !errors.Is(err, ErrNotBPFFS) || !strings.Contains(err.Error(), nested+" is not on bpffs") {
		t.Fatalf("EnsureBPFFS below a tmpfs inside bpffs = %v, %v; want ErrNotBPFFS naming %s", mounted, err, nested)
	}
	if ok, _ := IsBPFFS(nested); ok {
		t.Fatalf("a bpffs was mounted on %s", nested)
	}
}

// Under `ip netns exec` the process has a private mount namespace with a
// fresh /sys and no bpffs: EnsureBPFFS must refuse to mount one there, whose
// pins would die with the namespace. Only the helper's private namespace is
// looked at; nothing is ever unmounted.
func TestEnsureBPFFSRefusesForeignMountNamespace(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.MustBPFFS(t)
	ns := testutil.MustNetns(t, "pinstore")
	b := make([]byte, 8)
	rand.Read(b)
	root := filepath.Join(DefaultBPFFS, "bpfsup-test-foreign-"+hex.EncodeToString(b))

	out, err := helperCmd(t, "ensure-bpffs", Store{Root: root}, "", "ip", "netns", "exec", ns.Name).CombinedOutput()
	if err != nil {
		t.Fatalf("helper: %v\n%s", err, out)
	}
	report := string(out)
	for _, want := range []string{
		"host_mount_ns=false",
		"mounted=false",
		"foreign=true",
		"bpffs_after=false", // nothing was mounted in the helper's namespace either
		"pin root " + root,
		"bpffs is not mounted at " + DefaultBPFFS,
		"host's mount namespace",
		"ip netns exec",
		"--pin-root",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("helper's report lacks %q:\n%s", want, report)
		}
	}
	// The host's bpffs is untouched.
	if ok, err := IsBPFFS(DefaultBPFFS); !ok || err != nil {
		t.Fatalf("host's %s is no longer bpffs: %v", DefaultBPFFS, err)
	}
	if Exists(root) {
		t.Errorf("%s was created on the host", root)
	}
}
