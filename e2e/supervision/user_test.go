package supervision

import (
	"io"
	"os"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// copyExecutable copies the test binary to a directory that user nobody may
// enter: go test builds it in a 0700 directory.
func copyExecutable(tb testing.TB) string {
	tb.Helper()
	dir := shortDir(tb)
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	src, err := os.Open(self(tb))
	if err != nil {
		tb.Fatal(err)
	}
	defer src.Close()
	path := filepath.Join(dir, "child")
	dst, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		tb.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		tb.Fatal(err)
	}
	return path
}

var reportRe = regexp.MustCompile(`report (\w+)=(\S*)`)

// --user nobody: the child runs without privileges and still uses the maps
// it was handed, as far as their mode allows, which the kernel enforces; it
// cannot open the pins itself. Its sd_notify reaches bpfsup's notify socket
// (--notify=child), though that socket is not its user's. --group replaces
// the user's group.
func TestUserNobody(t *testing.T) {
	// Before 5.19, unprivileged_bpf_disabled refuses every bpf() of an
	// unprivileged process, on handed fds too.
	testutil.SkipWithout(t, testutil.UnprivilegedFDs)
	child := copyExecutable(t)
	for _, tt := range []struct {
		name  string
		flags []string
		gid   string
	}{
		{"user", []string{"--user", "nobody"}, "65534"},
		{"user and group", []string{"--user", "nobody", "--group", "daemon"}, "1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := testutil.MustEnv(t)
			sock := testutil.ListenNotify(t)
			env := childEnv("nobody", "NOTIFY_SOCKET="+sock.Path)
			args := append([]string{"-o", counterObj, "-o", testutil.BPFObject("dropfilter"),
				"--map-access", "dropfilter/drop_ports=ro", "--notify", "child", "--restart", "never"}, tt.flags...)
			p := startRun(t, e, env, append(args, "--", child)...)
			p.WaitOutput(t, "report done=1", 20*time.Second)
			sock.WaitFor(t, "READY=1")
			p.Kill(syscall.SIGTERM)
			if code := p.Wait(t, 10*time.Second); code != 0 {
				t.Fatalf("bpfsup exited %d, want the child's 0; output:\n%s", code, p.Output())
			}
			got := map[string]string{}
			for _, m := range reportRe.FindAllStringSubmatch(p.Output(), -1) {
				got[m[1]] = m[2]
			}
			g := tt.gid
			want := map[string]string{
				"uid":               "65534,65534,65534,65534", // real, effective, saved, fs
				"gid":               g + "," + g + "," + g + "," + g,
				"groups":            "", // root's supplementary groups are gone
				"counters_lookup":   "ok",
				"counters_update":   "ok",
				"drop_ports_lookup": "ok",
				"drop_ports_update": "EPERM", // handed read-only: the fd says so
				"open_pin":          "EACCES",
				"notify":            "true/ok",
			}
			for k, w := range want {
				if g, ok := got[k]; !ok || g != w {
					t.Errorf("child reports %s=%q, want %q", k, g, w)
				}
			}
			if t.Failed() {
				t.Logf("output:\n%s", p.Output())
			}

			// The update went to the pinned map, the one every later child gets.
			m, err := ebpf.LoadPinnedMap(filepath.Join(e.PinRoot, "counter", "maps", "counters"), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			var v uint64
			if err := m.Lookup(uint32(0), &v); err != nil || v != 77 {
				t.Errorf("counters[0] = %d (%v), want 77 written by the child", v, err)
			}
		})
	}
}
