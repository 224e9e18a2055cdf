package hookstest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// buildExample builds examples/<name> into a temporary directory.
func buildExample(t *testing.T, name string) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), name)
	// testutil.GoBuild: prebuilt in the VMs of `make kernels`.
	if b, err := testutil.GoBuild("./examples/"+name, out); err != nil {
		t.Fatalf("build examples/%s: %v\n%s", name, err, b)
	}
	return out
}

// TestExampleExecTracer runs examples/exec-tracer as its README says: no -a,
// the section names the tracepoint; the child prints the execs it reads from
// the ring buffer bpfsup handed it.
func TestExampleExecTracer(t *testing.T) {
	env := testutil.MustEnv(t)
	child := buildExample(t, "exec-tracer")
	if why := testutil.Missing(t, testutil.PerfLink); why != "" {
		out, code := env.Run(t, "run", "-o", testutil.BPFObject("exectrace"), "--", child)
		if code == 0 || !strings.Contains(out, "no perf_event bpf_link (Linux 5.15+)") {
			t.Fatalf("bpfsup run of the tracepoint example: exit %d, want a refusal naming perf_event links:\n%s", code, out)
		}
		t.Skip(why)
	}
	p := env.Start(t, "run", "-o", testutil.BPFObject("exectrace"), "--", child)
	p.WaitOutput(t, "reading exec events from the ring buffer", 30*time.Second)

	// A command of our own, whose file name nothing else execs.
	traced := filepath.Join(t.TempDir(), "traced-true")
	data, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(traced, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(traced).CombinedOutput(); err != nil {
		t.Fatalf("run %s: %v %s", traced, err, out)
	}
	p.WaitOutput(t, "comm=traced-true file="+traced, 10*time.Second)
	p.Kill(syscall.SIGTERM)
	if code := p.Wait(t, 20*time.Second); code != 0 {
		t.Fatalf("bpfsup exited %d after SIGTERM:\n%s", code, p.Output())
	}
}

// TestExampleCgroupConnect4 runs examples/cgroup-connect4 as its README
// says: connects from the cgroup to the blocked port fail with EPERM, others
// pass, and the child prints what was blocked.
func TestExampleCgroupConnect4(t *testing.T) {
	env := testutil.MustEnv(t)
	cgroup := mustCgroup(t)
	child := buildExample(t, "cgroup-connect4")
	p := env.Start(t, "run", "-o", testutil.BPFObject("connect4_block"), "-a", "block_connect4@"+cgroup, "--", child, "-block", "9999")
	p.WaitOutput(t, "blocking connect() to port 9999", 30*time.Second)

	// connect() on a UDP socket sends nothing: no traffic leaves the host.
	udpConnect := func(dir string, port string) (string, error) {
		cmd := exec.Command("bash", "-c", "exec 3<>/dev/udp/127.0.0.1/"+port)
		if dir != "" {
			f, err := os.Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			cmd.SysProcAttr = &unix.SysProcAttr{UseCgroupFD: true, CgroupFD: int(f.Fd())}
		}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := udpConnect(cgroup, "9999")
	if err == nil || !strings.Contains(out, "Operation not permitted") {
		t.Fatalf("connect to port 9999 from the cgroup: %v %q, want EPERM", err, out)
	}
	if out, err := udpConnect(cgroup, "9998"); err != nil {
		t.Fatalf("connect to port 9998 from the cgroup: %v %s", err, out)
	}
	if out, err := udpConnect("", "9999"); err != nil {
		t.Fatalf("connect to port 9999 from outside the cgroup: %v %s", err, out)
	}
	p.WaitOutput(t, "blocked 1 connect() to port 9999 (1 in all)", 10*time.Second)
	p.Kill(syscall.SIGTERM)
	if code := p.Wait(t, 20*time.Second); code != 0 {
		t.Fatalf("bpfsup exited %d after SIGTERM:\n%s", code, p.Output())
	}
}
