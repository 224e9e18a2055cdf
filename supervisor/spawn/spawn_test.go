package spawn

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/handoff"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// dupFile is an *os.File of its own for fd: a duplicate, so that closing or
// collecting the file leaves the original alone.
func dupFile(fd int, name string) (*os.File, error) {
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup fd %d: %w", fd, err)
	}
	return os.NewFile(uintptr(nfd), name), nil
}

// fdHaver is a map or a program.
type fdHaver interface{ FD() int }

// mustNamedFile is a handed file for obj, closed at the end of the test.
func mustNamedFile(tb testing.TB, name string, obj fdHaver) handoff.NamedFile {
	tb.Helper()
	f, err := dupFile(obj.FD(), name)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { f.Close() })
	return handoff.NamedFile{Name: name, File: f}
}

// mustCounterMap is an array u32 -> u64 with one entry, closed at the end
// of the test.
func mustCounterMap(tb testing.TB) *ebpf.Map {
	tb.Helper()
	testutil.RequireRoot(tb)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		tb.Fatalf("create map: %v", err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

// mustXDPPass is an XDP program that passes everything.
func mustXDPPass(tb testing.TB) *ebpf.Program {
	tb.Helper()
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */), asm.Return()},
	})
	if err != nil {
		tb.Fatalf("load program: %v", err)
	}
	tb.Cleanup(func() { p.Close() })
	return p
}

func mapIDOf(tb testing.TB, m *ebpf.Map) uint32 {
	tb.Helper()
	info, err := m.Info()
	if err != nil {
		tb.Fatal(err)
	}
	id, _ := info.ID()
	return uint32(id)
}

// safeBuffer collects a child's output.
type safeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *safeBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startedChild is a child started by Start, killed and reaped at the end of
// the test if it is still running.
type startedChild struct {
	*Process
	stdout, stderr *safeBuffer
	exited         chan struct{}
	state          *os.ProcessState
}

func mustStart(tb testing.TB, c Child) *startedChild {
	tb.Helper()
	sc := &startedChild{stdout: &safeBuffer{}, stderr: &safeBuffer{}, exited: make(chan struct{})}
	c.Stdout, c.Stderr = sc.stdout, sc.stderr
	p, err := Start(c)
	if err != nil {
		tb.Fatalf("start child: %v", err)
	}
	sc.Process = p
	go func() {
		sc.state = <-p.Done
		close(sc.exited)
	}()
	tb.Cleanup(func() {
		select {
		case <-sc.exited:
		default:
			syscall.Kill(p.Pid, syscall.SIGKILL)
			<-sc.exited
		}
	})
	return sc
}

// report waits for the child to exit successfully and returns its report.
func (sc *startedChild) report(tb testing.TB) childReport {
	tb.Helper()
	select {
	case <-sc.exited:
	case <-time.After(20 * time.Second):
		tb.Fatalf("child %d did not exit; output:\n%s%s", sc.Pid, sc.stdout, sc.stderr)
	}
	if !sc.state.Success() {
		tb.Fatalf("child exited with %v; output:\n%s%s", sc.state, sc.stdout, sc.stderr)
	}
	for _, line := range strings.Split(sc.stdout.String(), "\n") {
		if js, ok := strings.CutPrefix(line, reportPrefix); ok {
			var r childReport
			if err := json.Unmarshal([]byte(js), &r); err != nil {
				tb.Fatalf("child's report %q: %v", js, err)
			}
			return r
		}
	}
	tb.Fatalf("no report from the child; output:\n%s%s", sc.stdout, sc.stderr)
	return childReport{}
}

// checkFDs fails unless the child inherited exactly stdin, stdout, stderr
// and the handed fds from 3 on, with the given targets.
func checkFDs(tb testing.TB, r childReport, targets []string) {
	tb.Helper()
	want := []int{0, 1, 2}
	for i := range targets {
		want = append(want, handoff.FirstFD+i)
	}
	if !slices.Equal(r.Inherited, want) {
		tb.Fatalf("child inherited fds %v (all its fds: %v), want %v", r.Inherited, r.FDs, want)
	}
	for i, target := range targets {
		if r.FDs[handoff.FirstFD+i] != target {
			tb.Errorf("child's fd %d is %q, want %q", handoff.FirstFD+i, r.FDs[handoff.FirstFD+i], target)
		}
	}
}

func testExe(tb testing.TB) string {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	return exe
}

// mustWorldExecutable copies the test binary into a directory every user may
// enter, for an application run as another user: go test's own build
// directory is private to root.
func mustWorldExecutable(tb testing.TB) string {
	tb.Helper()
	dir, err := os.MkdirTemp("", "bpfsup-handoff-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	src, err := os.Open(testExe(tb))
	if err != nil {
		tb.Fatal(err)
	}
	defer src.Close()
	path := filepath.Join(dir, "handoff.test")
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

type helperCase struct{ name, path string }

// helperCases are the exec helpers Start can use: the native one (the
// default where there is one), the shell (the default elsewhere), and a
// freshly built bpfsup (where there is no shell).
func helperCases(t *testing.T) []helperCase {
	testutil.RequireRoot(t)
	cases := []helperCase{{"shell", ShellHelper}, {"bpfsup", testutil.BuildBpfsup(t)}}
	if NativeHelperImage() != nil {
		cases = append([]helperCase{{"native", NativeHelper}}, cases...)
	}
	return cases
}

// End to end through each exec helper: the child
// gets exactly the handed fds, LISTEN_PID is its own pid, and the Go side
// of the protocol finds maps and programs by short and full name.
func TestStartHandsOver(t *testing.T) {
	for _, hc := range helperCases(t) {
		t.Run(hc.name, func(t *testing.T) {
			helper := hc.path
			fwCounters, fwDrop, dnsCounters := mustCounterMap(t), mustCounterMap(t), mustCounterMap(t)
			prog := mustXDPPass(t)
			files := []handoff.NamedFile{
				mustNamedFile(t, "fw/maps/counters", fwCounters),
				mustNamedFile(t, "fw/maps/drop_ports", fwDrop),
				mustNamedFile(t, "dns/maps/counters", dnsCounters),
				mustNamedFile(t, "fw/programs/xdp_pass", prog),
			}
			// An fd the supervisor holds without close-on-exec (as one inherited
			// from a shell or a service manager) must not reach the application.
			stray, err := os.Open(os.DevNull)
			if err != nil {
				t.Fatal(err)
			}
			defer stray.Close()
			if _, err := unix.FcntlInt(stray.Fd(), unix.F_SETFD, 0); err != nil {
				t.Fatal(err)
			}

			queries := []string{"drop_ports", "fw/maps/drop_ports", "fw/maps/counters", "dns/maps/counters",
				"counters", "nosuch", "prog:xdp_pass", "prog:fw/programs/xdp_pass", "prog:counters"}

			c := mustStart(t, Child{
				Helper: helper,
				Args:   []string{testExe(t)},
				Env: append(os.Environ(),
					childEnv+"=report",
					queriesEnv+"="+strings.Join(queries, ","),
					writeEnv+"=fw/maps/counters",
					// The protocol's variables of the parent are replaced, not added to;
					// LISTEN_PIDFDID (systemd 256) names the parent, and goes.
					handoff.EnvListenFDs+"=99", handoff.EnvListenFDNames+"=stale", handoff.EnvListenPIDFDID+"=4242",
				),
				Files:   files,
				PinRoot: "/sys/fs/bpf/somewhere",
			})
			r := c.report(t)

			if r.Pid != c.Pid || r.ListenPID != strconv.Itoa(c.Pid) {
				t.Fatalf("child pid %d, LISTEN_PID %q, Start said %d", r.Pid, r.ListenPID, c.Pid)
			}
			if r.ListenFDs != "4" || r.ListenFDNames != "fw/maps/counters:fw/maps/drop_ports:dns/maps/counters:fw/programs/xdp_pass" {
				t.Fatalf("LISTEN_FDS=%q LISTEN_FDNAMES=%q", r.ListenFDs, r.ListenFDNames)
			}
			if r.PinRoot != "/sys/fs/bpf/somewhere" {
				t.Errorf("BPFSUP_PIN_ROOT=%q", r.PinRoot)
			}
			if r.ListenPIDFDID != "<unset>" {
				t.Errorf("the child got LISTEN_PIDFDID=%q, meant for its parent: a libsystemd that checks it refuses every fd", r.ListenPIDFDID)
			}
			checkFDs(t, r, []string{"anon_inode:bpf-map", "anon_inode:bpf-map", "anon_inode:bpf-map", "anon_inode:bpf-prog"})
			if want := []string{"fw/maps/counters", "fw/maps/drop_ports", "dns/maps/counters", "fw/programs/xdp_pass"}; !slices.Equal(r.Names, want) {
				t.Errorf("handoff.Files() names %v, want %v", r.Names, want)
			}
			if len(r.EnvAfter) != 0 {
				t.Errorf("protocol variables left after handoff.Files(): %v", r.EnvAfter)
			}

			progInfo, err := prog.Info()
			if err != nil {
				t.Fatal(err)
			}
			progID, _ := progInfo.ID()
			for q, want := range map[string]uint32{
				"drop_ports":                mapIDOf(t, fwDrop),
				"fw/maps/drop_ports":        mapIDOf(t, fwDrop),
				"fw/maps/counters":          mapIDOf(t, fwCounters),
				"dns/maps/counters":         mapIDOf(t, dnsCounters),
				"prog:xdp_pass":             uint32(progID),
				"prog:fw/programs/xdp_pass": uint32(progID),
			} {
				if got := r.IDs[q]; got != want || r.Errors[q] != "" {
					t.Errorf("child's %s: id %d, error %q; want id %d", q, got, r.Errors[q], want)
				}
			}
			for q, wants := range map[string][]string{
				"counters":      {"ambiguous", "fw/maps/counters", "dns/maps/counters"},
				"nosuch":        {`no map named "nosuch"`, "fw/maps/counters", "fw/programs/xdp_pass"},
				"prog:counters": {`no program named "counters"`},
			} {
				for _, want := range wants {
					if !strings.Contains(r.Errors[q], want) {
						t.Errorf("child's %s: error %q, want it to say %q", q, r.Errors[q], want)
					}
				}
			}

			// The child used the map it was handed: the parent sees its write.
			if r.Wrote != "" {
				t.Fatalf("child's write: %s", r.Wrote)
			}
			var v uint64
			if err := fwCounters.Lookup(uint32(0), &v); err != nil || v != uint64(c.Pid) {
				t.Fatalf("counters[0] = %d, %v; want the child's pid %d", v, err, c.Pid)
			}
		})
	}
}

// The application runs as nobody, without root's supplementary groups or
// capabilities, and can still use the map fd it holds.
func TestStartAsNobody(t *testing.T) {
	// Before 5.19, unprivileged_bpf_disabled refuses every bpf() of an
	// unprivileged process, on handed fds too.
	testutil.SkipWithout(t, testutil.UnprivilegedFDs)
	for _, hc := range helperCases(t) {
		t.Run(hc.name, func(t *testing.T) {
			helper := hc.path
			counters := mustCounterMap(t)
			c := mustStart(t, Child{
				Helper:     helper,
				Args:       []string{mustWorldExecutable(t)},
				Env:        append(os.Environ(), childEnv+"=report", queriesEnv+"=counters", writeEnv+"=counters"),
				Files:      []handoff.NamedFile{mustNamedFile(t, "fw/maps/counters", counters)},
				Credential: &Credential{UID: 65534, GID: 65534, Groups: []uint32{}},
			})
			r := c.report(t)

			for k, want := range map[string]string{
				"Uid":    "65534\t65534\t65534\t65534",
				"Gid":    "65534\t65534\t65534\t65534",
				"Groups": "",
				"CapEff": "0000000000000000",
			} {
				if r.Status[k] != want {
					t.Errorf("child's %s: %q, want %q", k, r.Status[k], want)
				}
			}
			if r.ListenPID != strconv.Itoa(c.Pid) {
				t.Errorf("LISTEN_PID=%q, child is %d", r.ListenPID, c.Pid)
			}
			checkFDs(t, r, []string{"anon_inode:bpf-map"})
			if got, want := r.IDs["counters"], mapIDOf(t, counters); got != want {
				t.Errorf("child's counters: id %d, error %q; want %d", got, r.Errors["counters"], want)
			}
			if r.Wrote != "" {
				t.Fatalf("child's write as nobody: %s", r.Wrote)
			}
			var v uint64
			if err := counters.Lookup(uint32(0), &v); err != nil || v != uint64(c.Pid) {
				t.Fatalf("counters[0] = %d, %v; want the child's pid %d", v, err, c.Pid)
			}
		})
	}
}

var grandchildPid = regexp.MustCompile(`grandchild pid=(\d+)`)

// The application dies with its supervisor: an intermediate process (the
// test binary standing in for bpfsup) starts it through the exec helper and
// is then SIGKILLed, with no chance to clean up.
func TestStartParentDeath(t *testing.T) {
	for _, tc := range []struct {
		name     string
		asNobody bool
	}{
		{"root", false},
		// A change of user clears the parent-death signal; it is set again
		// after it (by Go's fork for the shell, by the bpfsup helper).
		{"nobody", true},
	} {
		for _, hc := range helperCases(t) {
			tc, helper := tc, hc.path
			t.Run(tc.name+"/"+hc.name, func(t *testing.T) {
				testutil.RequireRoot(t)
				cmd := exec.Command(testExe(t))
				cmd.Env = append(os.Environ(), childEnv+"=intermediate", helperBinEnv+"="+helper, appEnv+"="+mustWorldExecutable(t))
				if tc.asNobody {
					cmd.Env = append(cmd.Env, asNobodyEnv+"=1")
				}
				mid := testutil.StartProc(t, cmd)
				// Either line may come first: two processes write them.
				mid.WaitOutput(t, "started pid=", 20*time.Second)
				mid.WaitOutput(t, "grandchild pid=", 20*time.Second)
				m := grandchildPid.FindStringSubmatch(mid.Output())
				pid, _ := strconv.Atoi(m[1])
				t.Cleanup(func() {
					if _, alive := testutil.ProcState(pid); alive {
						syscall.Kill(pid, syscall.SIGKILL)
					}
				})
				if !strings.Contains(mid.Output(), fmt.Sprintf("started pid=%d\n", pid)) {
					t.Fatalf("the application's pid is not the one Start returned:\n%s", mid.Output())
				}
				if _, alive := testutil.ProcState(pid); !alive {
					t.Fatalf("the application %d is not running", pid)
				}

				mid.Kill(syscall.SIGKILL)
				// Before waiting for the intermediate: its output pipe stays
				// open as long as the application, which inherited it, lives.
				testutil.WaitProcGone(t, pid, time.Second)
				mid.Wait(t, 10*time.Second)
			})
		}
	}
}

// A command that is not there ends the child as a shell would: status 127,
// and a message naming the command.
func TestStartCommandNotFound(t *testing.T) {
	for _, hc := range helperCases(t) {
		for _, cmd := range []string{"/nonexistent/bpfsup-no-such-command", "bpfsup-no-such-command"} {
			t.Run(hc.name+"/"+cmd, func(t *testing.T) {
				var stderr bytes.Buffer
				_, st := runToExit(t, Child{Helper: hc.path, Args: []string{cmd}, Stderr: &stderr})
				if st.ExitCode() != 127 || !strings.Contains(stderr.String(), "bpfsup") || !strings.Contains(stderr.String(), cmd) {
					t.Fatalf("exit %d, stderr %q; want 127 and a message naming bpfsup and %s", st.ExitCode(), stderr.String(), cmd)
				}
			})
		}
	}
}

// runToExit starts c and waits for it to exit.
func runToExit(t *testing.T, c Child) (*Process, *os.ProcessState) {
	t.Helper()
	p, err := Start(c)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case st := <-p.Done:
		return p, st
	case <-time.After(20 * time.Second):
		syscall.Kill(p.Pid, syscall.SIGKILL)
		t.Fatal("the child did not exit")
		return nil, nil
	}
}
