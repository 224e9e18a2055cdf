package hookstest

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

var (
	helperOnce sync.Once
	helperPath string
	helperErr  error
)

// buildHelper builds hookshelper once per test binary, with its symbol
// table (go test strips its own binary's), and returns its path.
func buildHelper(tb testing.TB) string {
	tb.Helper()
	helperOnce.Do(func() {
		dir, err := os.MkdirTemp("", "bpfsup-hookshelper-")
		if err != nil {
			helperErr = err
			return
		}
		helperPath = filepath.Join(dir, "hookshelper")
		// testutil.GoBuild: prebuilt in the VMs of `make kernels`.
		if out, err := testutil.GoBuild("./e2e/hooks/hookshelper", helperPath); err != nil {
			helperErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if helperErr != nil {
		tb.Fatalf("build hookshelper: %v", helperErr)
	}
	return helperPath
}

// removeHelper removes what buildHelper made.
func removeHelper() {
	if helperPath != "" {
		os.RemoveAll(filepath.Dir(helperPath))
	}
}

// uprobeSymbol is hookshelper's uprobeTarget: the binary and the symbol.
func uprobeSymbol(tb testing.TB) (binary, symbol string) {
	tb.Helper()
	bin := buildHelper(tb)
	f, err := elf.Open(bin)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		tb.Fatalf("symbols of %s: %v", bin, err)
	}
	for _, s := range syms {
		if s.Name == "main.uprobeTarget" {
			return bin, s.Name
		}
	}
	tb.Fatalf("no main.uprobeTarget in the symbols of %s", bin)
	return "", ""
}

// helper is a running helper process.
type helper struct {
	proc  *testutil.Proc
	stdin *os.File
}

// startHelper starts the helper in mode, in the cgroup whose directory is
// cgroup (if not empty) and the network namespace netns (if not empty), and
// waits until it is ready.
func startHelper(tb testing.TB, mode, cgroup, netns string) *helper {
	tb.Helper()
	args := []string{mode}
	if netns != "" {
		args = append(args, netns)
	}
	cmd := exec.Command(buildHelper(tb), args...)
	r, w, err := os.Pipe()
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stdin = r
	if cgroup != "" {
		dir, err := os.Open(cgroup)
		if err != nil {
			tb.Fatal(err)
		}
		defer dir.Close()
		cmd.SysProcAttr = &unix.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	}
	h := &helper{stdin: w}
	tb.Cleanup(func() { w.Close() })
	h.proc = testutil.StartProc(tb, cmd)
	r.Close()
	h.proc.WaitOutput(tb, "ready", 10*time.Second)
	return h
}

func (h *helper) pid() int { return h.proc.Pid() }

func (h *helper) start(tb testing.TB) {
	tb.Helper()
	if _, err := h.stdin.WriteString("go\n"); err != nil {
		tb.Fatalf("start helper: %v", err)
	}
}

// stop stops the helper and returns the number of events it caused.
func (h *helper) stop(tb testing.TB) uint64 {
	tb.Helper()
	if _, err := h.stdin.WriteString("stop\n"); err != nil {
		tb.Fatalf("stop helper: %v", err)
	}
	if code := h.proc.Wait(tb, 10*time.Second); code != 0 {
		tb.Fatalf("helper exited with %d:\n%s", code, h.proc.Output())
	}
	out := h.proc.Output()
	i := strings.LastIndex(out, "events ")
	if i < 0 {
		tb.Fatalf("helper printed no event count:\n%s", out)
	}
	n, err := strconv.ParseUint(strings.Fields(out[i+len("events "):])[0], 10, 64)
	if err != nil {
		tb.Fatalf("helper's event count: %v", err)
	}
	return n
}

// mustCgroup creates an empty cgroup v2 directory, removed when the test
// ends (after the processes the test started in it, whose cleanups run
// first).
func mustCgroup(tb testing.TB) string {
	tb.Helper()
	mountinfo, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		tb.Fatal(err)
	}
	root := ""
	for _, line := range strings.Split(string(mountinfo), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if f, p := strings.Fields(pre), strings.Fields(post); ok && len(f) >= 5 && len(p) >= 1 && p[0] == "cgroup2" {
			root = f[4]
			break
		}
	}
	if root == "" {
		tb.Fatal("cgroup v2 is not mounted")
	}
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		tb.Fatalf("%s is not cgroup2: %v", root, err)
	}
	dir, err := os.MkdirTemp(root, "bpfsup-test-")
	if err != nil {
		tb.Fatalf("create cgroup: %v", err)
	}
	tb.Cleanup(func() {
		// A process that just exited leaves its cgroup a moment later.
		var err error
		removed := testutil.Poll(10*time.Second, func() bool {
			err = unix.Rmdir(dir)
			return err == nil || errors.Is(err, unix.ENOENT)
		})
		if !removed {
			tb.Errorf("remove cgroup %s: %v", dir, err)
		}
	})
	return dir
}

// readSlot reads hits[slot] of an object's pinned hits map.
func readSlot(tb testing.TB, env *testutil.Env, object string, slot uint32) uint64 {
	tb.Helper()
	var v uint64
	e2e.LookupPinned(tb, e2e.PinPath(env, object, "maps", "hits"), slot, &v)
	return v
}

// setConfig makes the object's programs count the events of process pid.
func setConfig(tb testing.TB, env *testutil.Env, object string, pid int) {
	tb.Helper()
	e2e.PutPinned(tb, e2e.PinPath(env, object, "maps", "config"), uint32(0), uint32(pid))
}

// trampolinesRefused reports whether this kernel refuses BPF trampolines: a
// trivial fentry program fails to load with EPERM while a socket filter
// loads.
func trampolinesRefused(tb testing.TB) bool {
	tb.Helper()
	insns := asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}
	plain, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SocketFilter, Instructions: insns, License: "GPL"})
	if err != nil {
		tb.Fatalf("load a socket filter: %v", err)
	}
	plain.Close()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.Tracing, AttachType: ebpf.AttachTraceFEntry,
		AttachTo: "__task_pid_nr_ns", Instructions: insns, License: "GPL"})
	if err == nil {
		p.Close()
		return false
	}
	if errors.Is(err, unix.EPERM) {
		return true
	}
	tb.Fatalf("load a trivial fentry program: %v", err)
	return false
}

// kprobesMissing reports whether the kernel has neither a kprobe PMU nor
// kprobe_events in tracefs.
func kprobesMissing() bool {
	for _, p := range []string{"/sys/bus/event_source/devices/kprobe/type", "/sys/kernel/tracing/kprobe_events", "/sys/kernel/debug/tracing/kprobe_events"} {
		if _, err := os.Stat(p); err == nil {
			return false
		}
	}
	return true
}

// copyObject copies the committed object name ("hooks") to dir/<name>.bpf.o,
// the file bpfsup runs and an upgrade overwrites.
func copyObject(tb testing.TB, dir, name string) string {
	tb.Helper()
	dst := filepath.Join(dir, name+".bpf.o")
	e2e.PutObject(tb, dst, name)
	return dst
}

// bpfLSMActive reads the active LSMs from securityfs, mounting it on a
// private directory for a moment where it is not mounted, and reports
// whether the BPF LSM is among them.
func bpfLSMActive(tb testing.TB) bool {
	tb.Helper()
	list, err := os.ReadFile("/sys/kernel/security/lsm")
	if err != nil {
		dir := tb.TempDir()
		if err := unix.Mount("securityfs", dir, "securityfs", unix.MS_RDONLY, ""); err != nil {
			tb.Fatalf("mount securityfs: %v", err)
		}
		list, err = os.ReadFile(filepath.Join(dir, "lsm"))
		if uerr := unix.Unmount(dir, 0); uerr != nil {
			tb.Errorf("unmount securityfs: %v", uerr)
		}
		if err != nil {
			tb.Fatalf("read the LSM list: %v", err)
		}
	}
	for _, name := range strings.Split(strings.TrimSpace(string(list)), ",") {
		if name == "bpf" {
			return true
		}
	}
	return false
}
