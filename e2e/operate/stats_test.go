package operate

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
	"github.com/bpfsup/bpfsup/status"
)

const (
	startTimeout = 20 * time.Second
	waitTimeout  = 10 * time.Second
)

// statsSysctl is the global switch bpfsup must never touch.
const statsSysctl = "/proc/sys/kernel/bpf_stats_enabled"

func readStatsSysctl(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(statsSysctl)
	if err != nil {
		t.Fatalf("read %s: %v", statsSysctl, err)
	}
	return strings.TrimSpace(string(b))
}

// trafficRig is a UDP stream across a veth pair, into namespace b.
type trafficRig struct {
	a, b *testutil.Netns
	ifB  testutil.Veth
	recv *testutil.UDPReceiver
}

func newTrafficRig(t *testing.T) *trafficRig {
	t.Helper()
	r := &trafficRig{a: testutil.MustNetns(t, "op-a"), b: testutil.MustNetns(t, "op-b")}
	_, r.ifB = testutil.MustVethPair(t, r.a, r.b)
	r.recv = testutil.StartUDPReceiver(t, r.b, 0)
	return r
}

func (r *trafficRig) start(t *testing.T) *testutil.UDPSender {
	t.Helper()
	return testutil.StartUDPSender(t, r.a, netip.AddrPortFrom(r.ifB.Addr, uint16(r.recv.Port())), 1000)
}

// waitReceived waits until n more datagrams arrived.
func (r *trafficRig) waitReceived(t *testing.T, n uint64) {
	t.Helper()
	want := r.recv.Count() + n
	r.recv.WaitCount(t, want, waitTimeout)
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// programStatus is the status of program name of object.
func programStatus(t *testing.T, e *testutil.Env, object, name string) status.ProgramStatus {
	t.Helper()
	return e2e.FindProgram(t, e2e.ObjectStatus(t, e, object), name)
}

// With --program-stats, the kernel counts the runs and run time of an XDP
// program that traffic goes through, status and the metrics show them, and
// the sysctl kernel.bpf_stats_enabled is never written. When bpfsup is
// killed with SIGKILL, its statistics fd goes with it: the program keeps
// running, and the kernel stops counting.
func TestProgramStats(t *testing.T) {
	e := testutil.MustEnv(t)
	if v := readStatsSysctl(t); v != "0" {
		t.Fatalf("%s is %s on this machine: someone else has the kernel count every program's runs, and this test cannot tell bpfsup's counting from theirs", statsSysctl, v)
	}
	r := newTrafficRig(t)
	url := fmt.Sprintf("http://127.0.0.1:%d/metrics", freePort(t))
	addr := strings.TrimSuffix(strings.TrimPrefix(url, "http://"), "/metrics")
	sup := e.Start(t, "run", "--netns", r.b.Path, "-o", testutil.BPFObject("dropfilter"), "-a", "xdp_drop@xdp:"+r.ifB.Name,
		"--program-stats", "--metrics-addr", addr, "--restart", "never", "--", "sleep", "1000")
	sup.WaitOutput(t, "child started", startTimeout)
	o := e2e.ObjectStatus(t, e, "dropfilter")
	if o.Supervisor == nil || !o.Supervisor.ProgramStats {
		t.Fatalf("status does not say that the supervisor counts program statistics: %+v", o.Supervisor)
	}

	sender := r.start(t)
	defer sender.Stop()
	r.waitReceived(t, 50)
	var p status.ProgramStatus
	testutil.WaitFor(t, waitTimeout, "xdp_drop's run count to reach 50", func() bool {
		p = programStatus(t, e, "dropfilter", "xdp_drop")
		return p.RunCount >= 50
	})
	if p.RunTimeNs == 0 {
		t.Errorf("xdp_drop ran %d times in 0 ns", p.RunCount)
	}
	if v := readStatsSysctl(t); v != "0" {
		t.Errorf("%s is %s while bpfsup counts: bpfsup must not write it", statsSysctl, v)
	}
	out := e2e.MustRun(t, e, "status")
	e2e.WantAll(t, out, "xdp_drop", " runs ", " ns/run", "program stats on")

	series := fmt.Sprintf(`bpfsup_program_runs_total{object="dropfilter",program="xdp_drop",hook="xdp:%s"}`, r.ifB.Name)
	var m map[string]float64
	testutil.WaitFor(t, waitTimeout, series+" > 0 at "+url, func() bool {
		var err error
		m, err = e2e.Scrape(url)
		return err == nil && m[series] > 0
	})
	for _, s := range []string{
		fmt.Sprintf(`bpfsup_program_run_seconds_total{object="dropfilter",program="xdp_drop",hook="xdp:%s"}`, r.ifB.Name),
		fmt.Sprintf(`bpfsup_program_recursion_misses_total{object="dropfilter",program="xdp_drop",hook="xdp:%s"}`, r.ifB.Name),
		`bpfsup_map_memory_bytes{object="dropfilter",map="drop_ports"}`,
		`bpfsup_map_entries{object="dropfilter",map="drop_ports"}`,
	} {
		if _, ok := m[s]; !ok {
			t.Errorf("no %s in the metrics", s)
		}
	}
	if m[`bpfsup_map_memory_bytes{object="dropfilter",map="drop_ports"}`] <= 0 {
		t.Errorf("drop_ports uses no memory, the metrics say")
	}

	// SIGKILL: the stats fd is closed by the kernel with bpfsup's other fds.
	sup.Kill(syscall.SIGKILL)
	<-sup.Done()
	r.waitReceived(t, 20) // the program runs on: the link is pinned
	before := programStatus(t, e, "dropfilter", "xdp_drop").RunCount
	r.waitReceived(t, 100)
	if after := programStatus(t, e, "dropfilter", "xdp_drop").RunCount; after != before {
		t.Errorf("the kernel went on counting xdp_drop's runs after bpfsup was killed: %d, then %d", before, after)
	}
	if v := readStatsSysctl(t); v != "0" {
		t.Errorf("%s is %s after bpfsup was killed", statsSysctl, v)
	}
}

// Without --program-stats, nothing is counted and the metrics carry no
// program statistics.
func TestProgramStatsOff(t *testing.T) {
	e := testutil.MustEnv(t)
	if v := readStatsSysctl(t); v != "0" {
		t.Fatalf("%s is %s on this machine: someone else has the kernel count every program's runs", statsSysctl, v)
	}
	r := newTrafficRig(t)
	sup := e.Start(t, "run", "--netns", r.b.Path, "-o", testutil.BPFObject("dropfilter"), "-a", "xdp_drop@xdp:"+r.ifB.Name,
		"--restart", "never", "--", "sleep", "1000")
	sup.WaitOutput(t, "child started", startTimeout)
	sender := r.start(t)
	defer sender.Stop()
	r.waitReceived(t, 50)
	if p := programStatus(t, e, "dropfilter", "xdp_drop"); p.RunCount != 0 {
		t.Errorf("xdp_drop's runs were counted without --program-stats: %d", p.RunCount)
	}
}
