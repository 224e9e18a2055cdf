//go:build systemdvm

package systemdvm

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
	"github.com/bpfsup/bpfsup/status"
)

const (
	bpfsupBin = "/usr/bin/bpfsup"
	testBin   = "/vmtest/bin/systemdvm.test"
	objV1     = "/vmtest/bpf/dropfilter.bpf.o"
	objV2     = "/vmtest/bpf/dropfilter_v2.bpf.o"
	pinRoot   = "/sys/fs/bpf/bpfsup"
	// dropPort is the UDP port the application puts into drop_ports.
	dropPort = 7777
	// passPort is a port the filter lets through: traffic to it shows that
	// the path carries packets at all.
	passPort = 7778
	// waitLong bounds what systemd does under emulation: a start, a
	// restart after RestartSec=, a stop.
	waitLong = 90 * time.Second
)

// env is bpfsup's default pin root and state directory, as the units use.
var env = &testutil.Env{Bin: bpfsupBin, PinRoot: pinRoot, StateDir: "/run/bpfsup"}

// run runs a command and returns its combined output and exit status (-1
// when it did not run).
func run(name string, args ...string) (string, int) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			return string(out), ee.ExitCode()
		}
		return string(out) + err.Error(), -1
	}
	return string(out), 0
}

// must runs a command and fails the test unless it exits 0.
func must(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, code := run(name, args...)
	if code != 0 {
		t.Fatalf("%s %s: exit %d\n%s", name, strings.Join(args, " "), code, out)
	}
	return out
}

// show is one property of a unit, `systemctl show -P`.
func show(t testing.TB, unit, prop string) string {
	t.Helper()
	return strings.TrimSpace(must(t, "systemctl", "show", "--value", "-p", prop, unit))
}

func mainPID(t testing.TB, unit string) int {
	t.Helper()
	pid, _ := strconv.Atoi(show(t, unit, "MainPID"))
	return pid
}

// info prints a line the host copies into its report.
func info(format string, args ...any) {
	fmt.Printf("VMTEST-INFO "+format+"\n", args...)
}

// instance is one instance of a unit template, with its configuration,
// its application's state directory and, for network ones, a rig.
type instance struct {
	name     string // "a"
	template string // "bpfsup@"
	unit     string // "bpfsup@a.service"
	object   string // the object's name in the pin layout
	state    string // the application's directory
	config   string // /etc/bpfsup/<name>.toml
	obj      string // the object file the configuration names
	rig      *rig
}

// newInstance writes the configuration of instance name of template: the
// dropfilter object (a copy of v1, which a reload replaces with v2) on an
// XDP hook of a fresh rig, the test binary as the application with
// appArgs, and extra top-level lines. Cleanup stops the unit and takes
// down what it installed.
func newInstance(t *testing.T, template, name, extra string, appArgs ...string) *instance {
	t.Helper()
	in := &instance{
		name: name, template: template, unit: template + name + ".service",
		object: "fw_" + name, state: "/run/vmapp/" + name,
		config: "/etc/bpfsup/" + name + ".toml", obj: "/var/lib/vmtest/" + name + ".bpf.o",
	}
	in.rig = newRig(t, name)
	copyFile(t, objV1, in.obj)
	if err := os.RemoveAll(in.state); err != nil {
		t.Fatal(err)
	}
	cmd := []string{testBin, "app", "-state", in.state}
	cmd = append(cmd, appArgs...)
	quoted := make([]string, len(cmd))
	for i, c := range cmd {
		quoted[i] = strconv.Quote(c)
	}
	text := fmt.Sprintf(`command = [%s]
restart_delay = "100ms"
%s

[[object]]
path = %q
name = %q
[[object.attach]]
program = "xdp_drop"
hook = "xdp:%s"
netns = %q
`, strings.Join(quoted, ", "), extra, in.obj, in.object, in.rig.dst.Name, in.rig.dstNS.Path)
	writeFile(t, in.config, text)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := run("journalctl", "--no-pager", "-o", "short-monotonic", "-n", "60", "-u", in.unit)
			t.Logf("journal of %s:\n%s", in.unit, out)
		}
		in.down(t)
	})
	return in
}

// down stops the unit, forgets its failures and detaches what it installed.
func (in *instance) down(t testing.TB) {
	_, _ = run("systemctl", "stop", in.unit)
	_, _ = run("systemctl", "reset-failed", in.unit)
	// A store kept across the stop (FileDescriptorStorePreserve=, 254 and
	// later) holds the links: emptying it detaches those of pins = false.
	_, _ = run("systemctl", "clean", "--what=fdstore", in.unit)
	_, _ = run(bpfsupBin, "down", in.object)
}

// ids are the kernel ids of the instance's link, program and map.
type ids struct{ link, prog, dropPorts, dropCount uint32 }

func (in *instance) ids(t testing.TB) ids {
	t.Helper()
	o := e2e.ObjectStatus(t, env, in.object)
	if len(o.Links) != 1 {
		t.Fatalf("%s: %d links, want 1: %+v", in.object, len(o.Links), o.Links)
	}
	l := o.Links[0]
	if l.State != "attached" {
		t.Fatalf("%s: link %s is %s, want attached", in.object, l.Name, l.State)
	}
	return ids{
		link: uint32(l.ID), prog: uint32(l.ProgramID),
		dropPorts: uint32(e2e.FindMap(t, o, "drop_ports").ID), dropCount: uint32(e2e.FindMap(t, o, "drop_count").ID),
	}
}

func (in *instance) status(t testing.TB) status.ObjectStatus {
	t.Helper()
	return e2e.ObjectStatus(t, env, in.object)
}

// waitActive waits until the unit is active with a main pid other than
// old (0: any).
func (in *instance) waitActive(t testing.TB, old int) int {
	t.Helper()
	var pid int
	testutil.WaitFor(t, waitLong, in.unit+" active with a new main pid", func() bool {
		pid = mainPID(t, in.unit)
		return pid != 0 && pid != old && show(t, in.unit, "ActiveState") == "active"
	})
	return pid
}

// traffic starts the rig's traffic once the application has put dropPort
// into drop_ports (it does so after it starts, which is after READY=1
// unless notify = "child").
func (in *instance) traffic(t *testing.T) {
	t.Helper()
	testutil.WaitFor(t, waitLong, "the application to fill drop_ports", func() bool {
		return e2e.FindMap(t, in.status(t), "drop_ports").Entries == 1
	})
	in.rig.traffic(t)
}

// rig is a pair of network namespaces joined by a veth pair: traffic goes
// from src to dst, where the instance's filter sits on dst's end.
type rig struct {
	srcNS, dstNS *testutil.Netns
	src, dst     testutil.Veth
	dropped      *testutil.UDPReceiver // on dropPort: must stay at 0
	passed       *testutil.UDPReceiver // on passPort: shows the path works
}

func newRig(t *testing.T, name string) *rig {
	t.Helper()
	r := &rig{srcNS: testutil.MustNetns(t, "src"+name), dstNS: testutil.MustNetns(t, "dst"+name)}
	r.src, r.dst = testutil.MustVethPair(t, r.srcNS, r.dstNS)
	return r
}

// traffic sends to both ports from now until the test ends.
func (r *rig) traffic(t *testing.T) {
	t.Helper()
	r.dropped = testutil.StartUDPReceiver(t, r.dstNS, dropPort)
	r.passed = testutil.StartUDPReceiver(t, r.dstNS, passPort)
	testutil.StartUDPSender(t, r.srcNS, netip.AddrPortFrom(r.dst.Addr, dropPort), 200)
	testutil.StartUDPSender(t, r.srcNS, netip.AddrPortFrom(r.dst.Addr, passPort), 200)
	r.passed.WaitCount(t, 20, 30*time.Second)
}

// filtered checks that nothing reached the dropped port, and that traffic
// to the other port kept flowing since the last call (n: its count then).
func (r *rig) filtered(t testing.TB, since uint64) uint64 {
	t.Helper()
	if n := r.dropped.Count(); n != 0 {
		t.Errorf("%d datagrams reached port %d, which the filter drops: the data path was unfiltered", n, dropPort)
	}
	testutil.WaitFor(t, 30*time.Second, "traffic to the port the filter passes", func() bool {
		return r.passed.Count() > since+10
	})
	return r.passed.Count()
}

func writeFile(t testing.TB, path, text string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// copyFile copies src to dst through a new file renamed into place, as an
// upgrade puts a new object file down.
func copyFile(t testing.TB, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, dst+".new", string(data))
	if err := os.Rename(dst+".new", dst); err != nil {
		t.Fatal(err)
	}
}

// dropIn adds a drop-in to unit (runtime, gone at reboot) and reloads
// systemd; Cleanup removes it.
func dropIn(t *testing.T, unit, text string) {
	t.Helper()
	path := filepath.Join("/run/systemd/system", unit+".d", "vmtest.conf")
	writeFile(t, path, text)
	must(t, "systemctl", "daemon-reload")
	t.Cleanup(func() {
		os.Remove(path)
		_, _ = run("systemctl", "daemon-reload")
	})
}

// systemdVersion is systemd's version number, 252 for "systemd 252 (...)".
func systemdVersion(t testing.TB) int {
	t.Helper()
	out := must(t, "systemctl", "--version")
	f := strings.Fields(out)
	if len(f) < 2 {
		t.Fatalf("systemctl --version: %q", out)
	}
	v, err := strconv.Atoi(f[1])
	if err != nil {
		t.Fatalf("systemctl --version: %q", out)
	}
	return v
}

// signals is what the application of in recorded: one line per SIGTERM.
func (in *instance) signals() []string {
	data, _ := os.ReadFile(filepath.Join(in.state, "signals"))
	return strings.Fields(string(data))
}
