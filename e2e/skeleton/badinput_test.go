package skeleton

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
	"github.com/bpfsup/bpfsup/pinstore"
)

// Bad input is a clear error that names the thing, a non-zero exit, and
// nothing half-made: no pin under the pin root, no manifest or lock in the
// state directory, nothing attached, no child started.
func TestBadInput(t *testing.T) {
	testutil.RequireRoot(t)
	a, b := testutil.MustNetns(t, "bad-a"), testutil.MustNetns(t, "bad-b")
	_, ifB := testutil.MustVethPair(t, a, b)
	counter := testutil.BPFObject("counter")

	notBPF := filepath.Join(t.TempDir(), "notes.bpf.o")
	if err := os.WriteFile(notBPF, []byte("not an ELF file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	notOnBPFFS := filepath.Join(t.TempDir(), "pins")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	inUse := busy.Addr().String()

	for _, tc := range []struct {
		name string
		// args for bpfsup run, before "--"; config, when not empty, is
		// written to a file and given with -c.
		args   []string
		config string
		// pinRoot replaces the env's pin root.
		pinRoot string
		// want are substrings of the error, all of them.
		want []string
	}{
		{
			name: "missing object file",
			args: []string{"-o", "/nonexistent/fw.bpf.o", "-a", "xdp_fw@xdp:" + ifB.Name},
			want: []string{"/nonexistent/fw.bpf.o", "no such file"},
		},
		{
			name: "not an ELF file",
			args: []string{"-o", notBPF, "-a", "count_packets@xdp:" + ifB.Name},
			want: []string{notBPF, "not a", "ELF"},
		},
		{
			name: "ELF but not BPF",
			args: []string{"-o", "/bin/true", "-a", "count_packets@xdp:" + ifB.Name},
			want: []string{"/bin/true", "not a BPF ELF"},
		},
		{
			name: "program not in the object",
			args: []string{"-o", counter, "-a", "no_such_prog@xdp:" + ifB.Name},
			want: []string{`"no_such_prog"`, "not in the object", "count_packets"},
		},
		{
			name: "unknown hook",
			args: []string{"-o", counter, "-a", "count_packets@xdq:" + ifB.Name},
			want: []string{`"xdq"`, "unknown hook", "xdp"},
		},
		{
			name: "missing interface",
			args: []string{"-o", counter, "-a", "count_packets@xdp:nosuch0"},
			want: []string{`"nosuch0"`, b.Path, "not found"},
		},
		{
			name: "object name with a dot",
			config: fmt.Sprintf(`
[[object]]
path = %q
name = "a.b"
[[object.attach]]
program = "count_packets"
hook = "xdp:%s"
`, counter, ifB.Name),
			want: []string{`object name "a.b"`, `'.'`},
		},
		{
			name: "link name with a dot",
			config: fmt.Sprintf(`
[[object]]
path = %q
[[object.attach]]
program = "count_packets"
hook = "xdp:%s"
name = "count.packets"
`, counter, ifB.Name),
			want: []string{`link name "count.packets"`, `'.'`},
		},
		{
			name: "migrate a ring buffer by copy",
			config: fmt.Sprintf(`
[[object]]
path = %q
[object.programs.trace_exec]
autoattach = false
[object.maps.events]
migrate = "copy"
`, testutil.BPFObject("exectrace")),
			want: []string{"map events", `migrate = "copy" cannot copy a RingBuf map`, "reset = true"},
		},
		{
			// Refused after the object's directory and lock were made.
			name: "program the verifier refuses",
			args: []string{"-o", testutil.BPFObject("bad_verifier"), "-a", "bad@xdp:" + ifB.Name},
			want: []string{"bad", "verifier"},
		},
		{
			name: "metrics address with an impossible port",
			args: []string{"-o", counter, "-a", "count_packets@xdp:" + ifB.Name, "--metrics-addr", "127.0.0.1:99999"},
			want: []string{"127.0.0.1:99999", "0 to 65535"},
		},
		{
			name: "metrics address in use",
			args: []string{"-o", counter, "-a", "count_packets@xdp:" + ifB.Name, "--metrics-addr", inUse},
			want: []string{inUse, "address already in use"},
		},
		{
			name: "negative stop timeout",
			args: []string{"-o", counter, "-a", "count_packets@xdp:" + ifB.Name, "--stop-timeout", "-1s"},
			want: []string{"stop timeout -1s", "negative"},
		},
		{
			name:   "negative stop_timeout in the config",
			config: fmt.Sprintf("stop_timeout = \"-1s\"\n[[object]]\npath = %q\n", counter),
			want:   []string{`stop_timeout = "-1s"`, "negative"},
		},
		{
			name:   "overflowing restart_max_delay",
			config: fmt.Sprintf("restart_max_delay = \"9999999999h\"\n[[object]]\npath = %q\n", counter),
			want:   []string{`restart_max_delay = "9999999999h"`, "out of range", "2562047h"},
		},
		{
			name:   "empty object name",
			config: fmt.Sprintf("[[object]]\npath = %q\nname = \"\"\n", counter),
			want:   []string{`object[0].name = ""`, "empty string"},
		},
		{
			name:   "object name past the limit",
			config: fmt.Sprintf("[[object]]\npath = %q\nname = %q\n", counter, strings.Repeat("o", pinstore.MaxObjectNameLen+1)),
			want:   []string{"object name", fmt.Sprintf("%d bytes, longer than %d", pinstore.MaxObjectNameLen+1, pinstore.MaxObjectNameLen)},
		},
		{
			name: "link name past the limit",
			config: fmt.Sprintf("[[object]]\npath = %q\n[[object.attach]]\nprogram = \"count_packets\"\nhook = \"xdp:%s\"\nname = %q\n",
				counter, ifB.Name, strings.Repeat("l", pinstore.MaxNameLen+1)),
			want: []string{"link name", fmt.Sprintf("longer than %d", pinstore.MaxNameLen)},
		},
		{
			name:   "handed fd name too long",
			config: fmt.Sprintf("[[object]]\npath = %q\nname = %q\n", counter, strings.Repeat("o", pinstore.MaxObjectNameLen)),
			want:   []string{"map counters is handed to the application", "LISTEN_FDNAMES", "shorter name"},
		},
		{
			name:    "pin root not on bpffs",
			args:    []string{"-o", counter, "-a", "count_packets@xdp:" + ifB.Name},
			pinRoot: notOnBPFFS,
			want:    []string{notOnBPFFS, "not on bpffs"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := testutil.MustEnv(t)
			if tc.pinRoot != "" {
				env.PinRoot = tc.pinRoot
			}
			args := append([]string{"--netns", b.Path}, tc.args...)
			if tc.config != "" {
				args = append(args, "-c", e2e.WriteConfig(t, tc.config))
			}
			args = append(args, "--", "/bin/true")
			out, code := env.Run(t, "run", args...)
			t.Logf("bpfsup run %s:\n%s", strings.Join(args, " "), out)
			if code == 0 {
				t.Fatalf("bpfsup run exited 0")
			}
			e2e.WantAll(t, out, tc.want...)
			if strings.Contains(out, "child started") {
				t.Errorf("the child was started")
			}
			if left := e2e.TreeEntries(t, env.PinRoot); len(left) > 0 {
				t.Errorf("left under the pin root %s: %v", env.PinRoot, left)
			}
			if left := e2e.TreeEntries(t, env.StateDir); len(left) > 0 {
				t.Errorf("left in the state directory %s: %v", env.StateDir, left)
			}
			if got := netAttachments(t, b, ifB.Name); len(got) > 0 {
				t.Errorf("left attached to %s: %v", ifB.Name, got)
			}
		})
	}
}

// An object whose pinned map does not match: the error names the map and the
// field, and the installed object is untouched and still attached.
func TestIncompatiblePinnedMap(t *testing.T) {
	env := testutil.MustEnv(t)
	a, b := testutil.MustNetns(t, "inc-a"), testutil.MustNetns(t, "inc-b")
	_, ifB := testutil.MustVethPair(t, a, b)

	out, code := env.Run(t, "run", "--netns", b.Path, "-o", testutil.BPFObject("dropfilter"),
		"-a", "xdp_drop@xdp:"+ifB.Name, "--restart", "never", "--", "/bin/true")
	if code != 0 {
		t.Fatalf("install dropfilter: exit %d\n%s", code, out)
	}
	before := objectStatus(t, env, "dropfilter")
	pinsBefore := e2e.TreeEntries(t, env.PinRoot)
	manifest := filepath.Join(env.StateDir, "dropfilter.json")
	manBefore, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	xdpLink := e2e.FindLink(t, before, "xdp_drop")
	requireAttached(t, ifB, xdpLink.ID, e2e.FindProgram(t, before, "xdp_drop").ID)

	cfg := e2e.WriteConfig(t, fmt.Sprintf(`
[[object]]
path = %q
name = "dropfilter"
[[object.attach]]
program = "xdp_drop"
hook = "xdp:%s"
`, testutil.BPFObject("dropfilter_bigmap"), ifB.Name))
	out, code = env.Run(t, "run", "--netns", b.Path, "-c", cfg, "--", "/bin/true")
	t.Logf("bpfsup run with dropfilter_bigmap:\n%s", out)
	if code == 0 {
		t.Fatal("bpfsup run exited 0 with an incompatible pinned map")
	}
	e2e.WantAll(t, out, "drop_ports", "MaxEntries")
	if strings.Contains(out, "child started") {
		t.Errorf("the child was started")
	}

	after := objectStatus(t, env, "dropfilter")
	if pins := e2e.TreeEntries(t, env.PinRoot); !slices.Equal(pins, pinsBefore) {
		t.Errorf("pins changed: before %v, after %v", pinsBefore, pins)
	}
	if manAfter, err := os.ReadFile(manifest); err != nil || string(manAfter) != string(manBefore) {
		t.Errorf("manifest changed (err %v):\nbefore %s\nafter %s", err, manBefore, manAfter)
	}
	for _, m := range before.Maps {
		if got := e2e.FindMap(t, after, m.Name); got != m {
			t.Errorf("map %s: before %+v, after %+v", m.Name, m, got)
		}
	}
	for _, p := range before.Programs {
		if got := e2e.FindProgram(t, after, p.Name); got != p {
			t.Errorf("program %s: before %+v, after %+v", p.Name, p, got)
		}
	}
	if got := e2e.FindLink(t, after, "xdp_drop"); got != xdpLink {
		t.Errorf("link xdp_drop: before %+v, after %+v", xdpLink, got)
	}
	requireAttached(t, ifB, xdpLink.ID, e2e.FindProgram(t, before, "xdp_drop").ID)
}

// TestStatusBadInput: status of an object nothing is known of, or of a pin
// root that is not on bpffs, is an error that says so, not an empty report.
func TestStatusBadInput(t *testing.T) {
	env := testutil.MustEnv(t)
	for _, json := range []bool{false, true} {
		args := []string{"nope"}
		if json {
			args = []string{"--json", "nope"}
		}
		out, code := env.Run(t, "status", args...)
		if code == 0 || !strings.Contains(out, "object nope: nothing pinned at "+filepath.Join(env.PinRoot, "nope")) {
			t.Errorf("bpfsup status %v: exit %d, want an error naming the object:\n%s", args, code, out)
		}
	}
	notBPFFS := t.TempDir()
	if err := os.Mkdir(filepath.Join(notBPFFS, "looks-like-an-object"), 0o700); err != nil {
		t.Fatal(err)
	}
	out, code := env.Run(t, "status", "--pin-root", notBPFFS)
	if code == 0 || !strings.Contains(out, "pin root "+notBPFFS) || !strings.Contains(out, "not on bpffs") {
		t.Errorf("bpfsup status on a pin root off bpffs: exit %d, want an error naming it:\n%s", code, out)
	}
}

// With few fds to spare (ulimit -n), a start fails wherever it runs out,
// and says the real cause: too many open files, never that the interface
// or namespace is not there. Before, an interface lookup that got EMFILE
// said "target not found".
func TestTooFewFDs(t *testing.T) {
	a, b := testutil.MustNetns(t, "fds-a"), testutil.MustNetns(t, "fds-b")
	_, ifB := testutil.MustVethPair(t, a, b)
	failed := 0
	for n := 10; n <= 26; n += 2 {
		env := testutil.MustEnv(t)
		cmd := exec.Command("sh", "-c", fmt.Sprintf(`ulimit -n %d && exec "$@"`, n), "sh", env.Bin)
		cmd.Args = append(cmd.Args, env.Args("run", "--netns", b.Path, "-o", testutil.BPFObject("dropfilter"),
			"-a", "xdp_drop@xdp:"+ifB.Name, "--restart", "never", "--", "/bin/true")...)
		out, err := cmd.CombinedOutput()
		// A start may fail after its install: what it installed goes
		// before the next.
		if dout, code := env.Run(t, "down"); code != 0 {
			t.Fatalf("bpfsup down after ulimit -n %d: exit %d\n%s", n, code, dout)
		}
		if err == nil {
			continue
		}
		failed++
		if strings.Contains(string(out), "not found") || !strings.Contains(string(out), "too many open files") {
			t.Errorf("ulimit -n %d: bpfsup does not say the real cause:\n%s", n, out)
		}
		if strings.Contains(string(out), "verifier log") {
			t.Errorf("ulimit -n %d: a verifier log for a lack of fds:\n%s", n, out)
		}
	}
	if failed == 0 {
		t.Fatal("no start ran out of fds: the test tried too few")
	}
}

// Names at the limits of the pin layout work end to end: an object's name
// of pinstore.MaxObjectNameLen bytes and a link's of pinstore.MaxNameLen
// start, show in status, reload and go with down. Before, names of 250 to
// 255 bytes passed the check and then failed on the lock file or the
// manifest's temporary file.
func TestLongestNames(t *testing.T) {
	env := testutil.MustEnv(t)
	a, b := testutil.MustNetns(t, "long-a"), testutil.MustNetns(t, "long-b")
	_, ifB := testutil.MustVethPair(t, a, b)
	object, lnk := strings.Repeat("o", pinstore.MaxObjectNameLen), strings.Repeat("l", pinstore.MaxNameLen)
	// Handed to the application, the map would be named "<object>/maps/
	// counters", longer than LISTEN_FDNAMES takes.
	cfg := e2e.WriteConfig(t, fmt.Sprintf(`
[[object]]
path = %q
name = %q
[object.maps.counters]
access = "none"
[[object.attach]]
program = "count_packets"
hook = "xdp:%s"
name = %q
`, testutil.BPFObject("counter"), object, ifB.Name, lnk))
	p := startRun(t, env, nil, "--netns", b.Path, "-c", cfg, "--", "sleep", "3600")
	p.WaitOutput(t, "child started", startTimeout)
	o := objectStatus(t, env, object)
	if len(o.Links) != 1 || o.Links[0].Name != lnk || !o.Healthy {
		t.Fatalf("status: %+v", o)
	}
	e2e.MustRun(t, env, "reload")
	p.Kill(syscall.SIGTERM)
	p.Wait(t, waitTimeout)
	if out, code := env.Run(t, "down", object); code != 0 || !strings.Contains(out, "removed "+object) {
		t.Fatalf("bpfsup down: exit %d\n%s", code, out)
	}
	if left := e2e.TreeEntries(t, env.PinRoot); len(left) > 0 {
		t.Errorf("left under the pin root: %v", left)
	}
}
