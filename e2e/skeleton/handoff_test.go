package skeleton

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
	"github.com/bpfsup/bpfsup/supervisor/spawn"
)

// systemPython has python3-systemd; the python3 on PATH may not.
const systemPython = "/usr/bin/python3"

// pythonChild reads the hand-off with python-systemd, asks the kernel for
// each fd's map id (BPF_OBJ_GET_INFO_BY_FD), puts a key into the map named
// drop_ports (BPF_MAP_UPDATE_ELEM) and prints one JSON line:
// {"pid": P, "fds": {"3": {"name": N, "map_id": I, "map_name": M}, ...}}.
const pythonChild = `
import ctypes, json, os, platform, struct, sys, time
from systemd import daemon

libc = ctypes.CDLL(None, use_errno=True)
SYS_bpf = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "s390x": 351, "ppc64le": 361}[platform.machine()]
BPF_MAP_UPDATE_ELEM, BPF_OBJ_GET_INFO_BY_FD = 2, 15

def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, len(attr))
    if libc.syscall(SYS_bpf, cmd, buf, len(attr)) < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))

def map_info(fd):
    info = ctypes.create_string_buffer(40)  # bpf_map_info up to name[16]
    bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("=IIQ", fd, 40, ctypes.addressof(info)))
    typ, mid = struct.unpack_from("=II", info.raw, 0)
    return mid, info.raw[24:40].rstrip(b"\0").decode()

fds = daemon.listen_fds_with_names()
out = {}
for fd, name in sorted(fds.items()):
    mid, mname = map_info(fd)
    out[str(fd)] = {"name": name, "map_id": mid, "map_name": mname}
    if mname == "drop_ports":
        key = ctypes.c_uint16(int(sys.argv[1]))
        value = ctypes.c_uint8(1)
        bpf(BPF_MAP_UPDATE_ELEM, struct.pack("=IIQQQ", fd, 0, ctypes.addressof(key), ctypes.addressof(value), 0))
print(json.dumps({"pid": os.getpid(), "fds": out}), flush=True)
time.sleep(3600)
`

// A child in another language reads the hand-off: python-systemd's
// listen_fds_with_names sees the names bpfsup gave, and the fds are the maps
// that status shows, usable with plain bpf(2) calls.
func TestPythonChild(t *testing.T) {
	if _, err := os.Stat(systemPython); err != nil {
		t.Skipf("%s is not installed", systemPython)
	}
	if out, err := exec.Command(systemPython, "-c", "import systemd.daemon").CombinedOutput(); err != nil {
		t.Skipf("%s has no python3-systemd (apt install python3-systemd): %v\n%s", systemPython, err, out)
	}
	env := testutil.MustEnv(t)
	a, b := testutil.MustNetns(t, "py-a"), testutil.MustNetns(t, "py-b")
	_, ifB := testutil.MustVethPair(t, a, b)
	const port = 4242
	sup := startRun(t, env, nil, "--netns", b.Path, "-o", testutil.BPFObject("dropfilter"),
		"-a", "xdp_drop@xdp:"+ifB.Name, "--", systemPython, "-c", pythonChild, strconv.Itoa(port))
	sup.WaitOutput(t, `"fds"`, startTimeout)

	line := regexp.MustCompile(`(?m)^\{"pid".*$`).FindString(sup.Output())
	var got struct {
		PID int `json:"pid"`
		FDs map[string]struct {
			Name    string `json:"name"`
			MapID   uint32 `json:"map_id"`
			MapName string `json:"map_name"`
		} `json:"fds"`
	}
	if err := json.Unmarshal([]byte(line), &got); err != nil {
		t.Fatalf("python child's line %q: %v", line, err)
	}
	o := objectStatus(t, env, "dropfilter")
	if o.Supervisor == nil || o.Supervisor.ChildPID != got.PID {
		t.Fatalf("status shows supervisor %+v, python child is pid %d", o.Supervisor, got.PID)
	}
	// Maps in name order, from fd 3 on.
	want := map[string]string{
		"3": "dropfilter/maps/drop_count",
		"4": "dropfilter/maps/drop_ports",
	}
	if len(got.FDs) != len(want) {
		t.Fatalf("python child got fds %+v, want %v", got.FDs, want)
	}
	for fd, name := range want {
		f, ok := got.FDs[fd]
		if !ok || f.Name != name {
			t.Fatalf("python child sees fd %s as %+v, want %s (all: %+v)", fd, f, name, got.FDs)
		}
		short := filepath.Base(name)
		if m := e2e.FindMap(t, o, short); f.MapID != m.ID || f.MapName != short {
			t.Fatalf("fd %s (%s) is map %d %q, status says %s is map %d", fd, name, f.MapID, f.MapName, short, m.ID)
		}
	}

	// The python child wrote into drop_ports through its fd.
	m, err := ebpf.LoadPinnedMap(filepath.Join(env.PinRoot, "dropfilter", "maps", "drop_ports"), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var v uint8
	if err := m.Lookup(uint16(port), &v); err != nil || v != 1 {
		t.Fatalf("drop_ports[%d] = %d, %v; the python child put 1 there", port, v, err)
	}
}

// fdsOf lists the open fds of process pid and what they point to.
func fdsOf(t *testing.T, pid int) map[int]string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("list fds of %d: %v", pid, err)
	}
	fds := map[int]string{}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if errors.Is(err, os.ErrNotExist) {
			continue // closed since the listing: the child is still starting
		}
		if err != nil {
			t.Fatalf("read fd %d of %d: %v", fd, pid, err)
		}
		fds[fd] = target
	}
	return fds
}

// The hand-off leaks nothing: the child holds fds 0, 1 and 2 and the handed
// ones, in the order LISTEN_FDNAMES names them, and no other; not even an fd
// that bpfsup itself inherited without being told to pass it on. So through
// each exec helper --exec-helper names.
func TestHandoffLeaksNothing(t *testing.T) {
	for _, helper := range spawn.HelperNames {
		t.Run(helper, func(t *testing.T) {
			if helper == "native" && spawn.NativeHelperImage() == nil {
				t.Skipf("no native exec helper on %s", runtime.GOARCH)
			}
			handoffLeaksNothing(t, helper)
		})
	}
}

func handoffLeaksNothing(t *testing.T, helper string) {
	env := testutil.MustEnv(t)
	a, b := testutil.MustNetns(t, "fd-a"), testutil.MustNetns(t, "fd-b")
	_, ifB := testutil.MustVethPair(t, a, b)
	cfg := e2e.WriteConfig(t, fmt.Sprintf(`
netns = %q
[[object]]
path = %q
handoff_links = true
[[object.attach]]
program = "xdp_drop"
hook = "xdp:%s"
[object.programs.xdp_drop]
handoff = true
`, b.Path, testutil.BPFObject("dropfilter"), ifB.Name))

	// An fd bpfsup inherits (without LISTEN_FDS) at a number above the
	// handed ones: it is bpfsup's, not the child's.
	stray, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer stray.Close()
	const strayFD = 20
	// The child is a program that opens no fd of its own: what it holds
	// is what it was given.
	cmd := exec.Command(env.Bin, env.Args("run", "-c", cfg, "--exec-helper", helper, "--", "/bin/sleep", "3600")...)
	cmd.ExtraFiles = make([]*os.File, strayFD-2)
	cmd.ExtraFiles[strayFD-3] = stray
	sup := testutil.StartProc(t, cmd)
	sup.WaitOutput(t, `msg="child started"`, startTimeout)
	if !strings.Contains(sup.Output(), "exec_helper="+helper) {
		t.Fatalf("--exec-helper %s: the child was started otherwise:\n%s", helper, sup.Output())
	}
	pid := 0
	testutil.WaitFor(t, waitTimeout, "the child's pid in status", func() bool {
		o := objectStatus(t, env, "dropfilter")
		if o.Supervisor != nil {
			pid = o.Supervisor.ChildPID
		}
		return pid != 0
	})
	// The child holds exactly fds 0, 1, 2 and the handed ones. Until sleep
	// is through exec and its start-up (the exec helper first, then the C
	// library opening locale files) it may hold others for a moment, so
	// wait for the set to settle; a leaked fd never goes away.
	want := map[int]string{3: "anon_inode:bpf-map", 4: "anon_inode:bpf-map", 5: "anon_inode:bpf-prog", 6: "anon_inode:bpf-link"}
	var fds map[int]string
	var cenv map[string]string
	var problems []string
	settled := testutil.Poll(waitTimeout, func() bool {
		fds, cenv = fdsOf(t, pid), e2e.Environ(t, pid)
		problems = fdProblems(fds, want)
		if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); !strings.HasSuffix(exe, "/sleep") {
			problems = append(problems, "the child is "+exe+", not sleep yet")
		}
		return len(problems) == 0 && cenv["LISTEN_FDS"] != ""
	})
	if !settled {
		t.Fatalf("after %v the child's fds are %v:\n%s", waitTimeout, fds, strings.Join(problems, "\n"))
	}

	names := strings.Split(cenv["LISTEN_FDNAMES"], ":")
	wantNames := []string{"dropfilter/maps/drop_count", "dropfilter/maps/drop_ports",
		"dropfilter/programs/xdp_drop", "dropfilter/links/xdp_drop"}
	if !slices.Equal(names, wantNames) || cenv["LISTEN_FDS"] != strconv.Itoa(len(wantNames)) || cenv["LISTEN_PID"] != strconv.Itoa(pid) {
		t.Fatalf("child's LISTEN_FDS=%q LISTEN_PID=%q LISTEN_FDNAMES=%q; want %d, %d, %q",
			cenv["LISTEN_FDS"], cenv["LISTEN_PID"], cenv["LISTEN_FDNAMES"], len(wantNames), pid, strings.Join(wantNames, ":"))
	}
	if cenv["BPFSUP_PIN_ROOT"] != env.PinRoot {
		t.Errorf("child's BPFSUP_PIN_ROOT=%q, want %q", cenv["BPFSUP_PIN_ROOT"], env.PinRoot)
	}

	// And they are the objects status shows.
	o := objectStatus(t, env, "dropfilter")
	wantInfo := map[int]string{
		3: fmt.Sprintf("map_id:\t%d", e2e.FindMap(t, o, "drop_count").ID),
		4: fmt.Sprintf("map_id:\t%d", e2e.FindMap(t, o, "drop_ports").ID),
		5: fmt.Sprintf("prog_id:\t%d", e2e.FindProgram(t, o, "xdp_drop").ID),
		6: fmt.Sprintf("link_id:\t%d", e2e.FindLink(t, o, "xdp_drop").ID),
	}
	for fd, line := range wantInfo {
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", pid, fd))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(info), line+"\n") {
			t.Errorf("child's fd %d (%s) is not %q:\n%s", fd, names[fd-3], line, info)
		}
	}
	sup.Kill(syscall.SIGTERM)
	if code := sup.Wait(t, waitTimeout); code != 143 && code != 0 {
		t.Fatalf("bpfsup exited %d after SIGTERM", code)
	}
}

// fdProblems compares a child's fds with 0, 1, 2 and want (fd -> target).
func fdProblems(fds, want map[int]string) []string {
	var problems []string
	for fd := range 3 {
		if _, ok := fds[fd]; !ok {
			problems = append(problems, fmt.Sprintf("no fd %d", fd))
		}
	}
	for fd, target := range fds {
		if fd > 2 && want[fd] != target {
			problems = append(problems, fmt.Sprintf("fd %d -> %s, want %q", fd, target, want[fd]))
		}
	}
	for fd, target := range want {
		if _, ok := fds[fd]; !ok {
			problems = append(problems, fmt.Sprintf("no fd %d (%s)", fd, target))
		}
	}
	slices.Sort(problems)
	return problems
}

// Where the kernel refuses executable memfds (vm.memfd_noexec=2, set here
// in a pid namespace of the test's own, where it stays), the child starts
// through the shell, with its own pid as LISTEN_PID, and the log says so;
// --exec-helper native fails saying what to do instead.
func TestMemfdNoexecStartsThroughShell(t *testing.T) {
	if _, err := os.Stat("/proc/sys/vm/memfd_noexec"); err != nil {
		t.Skipf("no vm.memfd_noexec on this kernel (Linux 6.3): %v", err)
	}
	if spawn.NativeHelperImage() == nil {
		t.Skipf("no native exec helper on %s", runtime.GOARCH)
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("no unshare(1)")
	}
	env := testutil.MustEnv(t)
	run := func(args ...string) (string, error) {
		cmd := exec.Command("unshare", append([]string{"--pid", "--fork", "--mount-proc", "sh", "-c",
			`echo 2 > /proc/sys/vm/memfd_noexec && exec "$@"`, "sh", env.Bin}, env.Args("run", args...)...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("-o", testutil.BPFObject("counter"), "--restart", "never", "--",
		"sh", "-c", `echo "LISTEN_PID=$LISTEN_PID pid=$$"`)
	if err != nil {
		t.Fatalf("bpfsup run: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`LISTEN_PID=(\d+) pid=(\d+)`).FindStringSubmatch(out)
	if m == nil || m[1] != m[2] || !strings.Contains(out, "exec_helper=shell") {
		t.Fatalf("want the child started through the shell with its own pid as LISTEN_PID:\n%s", out)
	}
	out, err = run("-o", testutil.BPFObject("counter"), "--restart", "never", "--exec-helper", "native", "--", "true")
	if err == nil || !strings.Contains(out, "memfd_create: permission denied") || !strings.Contains(out, "--exec-helper shell") {
		t.Fatalf("--exec-helper native under vm.memfd_noexec=2: %v, want a refusal naming --exec-helper shell:\n%s", err, out)
	}
}
