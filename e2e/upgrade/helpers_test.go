package upgrade

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	bpfstatus "github.com/bpfsup/bpfsup/status"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/bpfsup/bpfsup/bpf"
	"github.com/bpfsup/bpfsup/handoff"
	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
	"github.com/bpfsup/bpfsup/pinstore"
)

// childEnv makes the test binary, started by bpfsup as its child, behave as
// a child application (see childMain) instead of running the tests.
const childEnv = "BPFSUP_UPGRADE_TEST_CHILD"

// Ports of the traffic tests, in the test's private namespaces.
const (
	portDropped = 4000 // in drop_ports: dropped by every version
	portV2      = 9999 // dropped by dropfilter_v2 only (hard-coded in it)
	portPassX   = 4001 // never dropped, on the XDP pair
	portPassT   = 4002 // never dropped, on the tcx pair
	portLate    = 4003 // put in drop_ports during a migration
)

// childMain is the child application: it says who it is and which fds it
// got, reports every signal, says READY=1 on SIGUSR1 when it has a notify
// socket, and exits 0 on SIGTERM.
func childMain() {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGTERM, syscall.SIGINT)
	var maps []string
	names := os.Getenv(handoff.EnvListenFDNames)
	files, _ := handoff.Files()
	for _, f := range files {
		m, err := ebpf.NewMapFromFD(int(f.File.Fd()))
		if err != nil {
			continue
		}
		if info, err := m.Info(); err == nil {
			id, _ := info.ID()
			maps = append(maps, fmt.Sprintf("%s=%d", f.Name, id))
		}
		// m owns the fd now; closing it closes the handed fd, which the
		// child does not need any more.
		m.Close()
	}
	fmt.Printf("child: pid=%d ppid=%d maps=%s names=%s\n", os.Getpid(), os.Getppid(), strings.Join(maps, ","), names)
	for sig := range sigs {
		fmt.Printf("child %d: got %s\n", os.Getpid(), sig)
		if sig == syscall.SIGUSR1 && os.Getenv("NOTIFY_SOCKET") != "" {
			// Under --notify=child: the application says it is ready.
			ok, err := daemon.SdNotify(false, "READY=1\nSTATUS=serving")
			fmt.Printf("child %d: notified ok=%v err=%v\n", os.Getpid(), ok, err)
		}
		if sig == syscall.SIGTERM || sig == syscall.SIGINT {
			os.Exit(0)
		}
	}
}

// childLine is the line in which a child announces itself (childMain).
var childLine = regexp.MustCompile(`child: pid=(\d+) ppid=(\d+) maps=(\S*)`)

// waitChildren waits until n children have announced themselves, and
// returns the last one's pid.
func waitChildren(t *testing.T, p *testutil.Proc, n int) int {
	t.Helper()
	pids := e2e.WaitPIDs(t, p, childLine, n, 10*time.Second)
	if len(pids) != n {
		t.Fatalf("%d children started, want %d; output:\n%s", len(pids), n, p.Output())
	}
	return pids[n-1]
}

// startBpfsup starts `bpfsup run ARGS -- <this test binary as child>` with
// bin (e.Bin when empty).
func startBpfsup(t testing.TB, e *testutil.Env, bin string, args ...string) *testutil.Proc {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if bin == "" {
		bin = e.Bin
	}
	cmd := exec.Command(bin, e.Args("run", append(args, "--", self)...)...)
	cmd.Env = append(os.Environ(), childEnv+"=1")
	return testutil.StartProc(t, cmd)
}

// deploy replaces path by the committed object name ("dropfilter_v2") the
// way a deploy does: written beside it, then renamed over it.
func deploy(t testing.TB, path, name string) {
	t.Helper()
	writeAtomic(t, path, bpf.Object(name+".bpf.o"))
}

func writeAtomic(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), ".deploy-"+filepath.Base(path))
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// attachment is one [[object.attach]] of a config.
type attachment struct{ program, hook string }

// config is a bpfsup TOML configuration with one object.
type config struct {
	object string
	netns  string
	attach []attachment
	// maps holds lines for [object.maps.drop_ports], e.g. "reset = true".
	dropPorts []string
}

func (c config) String() string {
	var b strings.Builder
	if c.netns != "" {
		fmt.Fprintf(&b, "netns = %q\n", c.netns)
	}
	fmt.Fprintf(&b, "\n[[object]]\npath = %q\n", c.object)
	for _, a := range c.attach {
		fmt.Fprintf(&b, "\n[[object.attach]]\nprogram = %q\nhook = %q\n", a.program, a.hook)
	}
	if len(c.dropPorts) > 0 {
		fmt.Fprintf(&b, "\n[object.maps.drop_ports]\n%s\n", strings.Join(c.dropPorts, "\n"))
	}
	return b.String()
}

// with is c with one more attachment.
func (c config) with(a attachment) config {
	c.attach = append(append([]attachment(nil), c.attach...), a)
	return c
}

// write writes the config to path by rename.
func (c config) write(t testing.TB, path string) {
	t.Helper()
	writeAtomic(t, path, []byte(c.String()))
}

// status reads the status of object name as `bpfsup status --json` does
// (in this process: the test samples it often, under load).
func status(t *testing.T, e *testutil.Env, name string) bpfstatus.ObjectStatus {
	t.Helper()
	st, err := bpfstatus.ReadStatus(pinstore.Store{Root: e.PinRoot, StateDir: e.StateDir}, name)
	if err != nil {
		t.Fatalf("status: %v", err)
	}
	if len(st.Objects) != 1 {
		t.Fatalf("status: %d objects, want 1", len(st.Objects))
	}
	return st.Objects[0]
}

// reload runs `bpfsup reload` and returns its output and exit status.
func reload(t *testing.T, e *testutil.Env) (string, int) {
	t.Helper()
	return e.Run(t, "reload")
}

// reloadWhileStopped runs `bpfsup reload` against p, which the test armed
// with crash.StopEnvVar: once p stopped itself (at what the test describes
// in where), it runs during, lets p go on and returns what the reload said.
func reloadWhileStopped(t *testing.T, e *testutil.Env, p *testutil.Proc, where string, during func()) (string, int) {
	t.Helper()
	type result struct {
		out  string
		code int
	}
	done := make(chan result, 1)
	go func() {
		cmd := exec.Command(e.Bin, e.Args("reload")...)
		out, err := cmd.CombinedOutput()
		code := 0
		if err != nil {
			code = -1
			if cmd.ProcessState != nil {
				code = cmd.ProcessState.ExitCode()
			}
		}
		done <- result{string(out), code}
	}()
	testutil.WaitFor(t, 30*time.Second, "bpfsup to stop "+where, func() bool {
		st, _ := testutil.ProcState(p.Pid())
		return st == 'T'
	})
	during()
	p.Kill(syscall.SIGCONT)
	select {
	case r := <-done:
		return r.out, r.code
	case <-time.After(2 * time.Minute):
		t.Fatal("bpfsup reload did not return")
		return "", 0
	}
}

// pinPath is the pin of dropfilter's map, program or link.
func pinPath(e *testutil.Env, kind, name string) string {
	return e2e.PinPath(e, "dropfilter", kind, name)
}

// linkIDs reads the pinned link's id and the id of the program it runs.
func linkIDs(t *testing.T, e *testutil.Env, name string) (linkID link.ID, progID ebpf.ProgramID) {
	t.Helper()
	info, err := e2e.PinnedAttachmentInfo(pinPath(e, "links", name))
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	return info.ID, info.Program
}

func withMap(t *testing.T, e *testutil.Env, name string, fn func(*ebpf.Map)) {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(pinPath(e, "maps", name), nil)
	if err != nil {
		t.Fatalf("map %s: %v", name, err)
	}
	defer m.Close()
	fn(m)
}

func dropCount(t *testing.T, e *testutil.Env) uint64 {
	t.Helper()
	var n uint64
	e2e.LookupPinned(t, pinPath(e, "maps", "drop_count"), uint32(0), &n)
	return n
}

func addDropPort(t *testing.T, e *testutil.Env, port uint16) {
	t.Helper()
	e2e.PutPinned(t, pinPath(e, "maps", "drop_ports"), port, uint8(1))
}

// dropPorts lists the keys of drop_ports, and its id and size.
func dropPorts(t *testing.T, e *testutil.Env) (ports []uint16, id ebpf.MapID, maxEntries uint32) {
	t.Helper()
	withMap(t, e, "drop_ports", func(m *ebpf.Map) {
		var k uint16
		var v uint8
		it := m.Iterate()
		for it.Next(&k, &v) {
			ports = append(ports, k)
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		info, err := m.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ = info.ID()
		maxEntries = m.MaxEntries()
	})
	return ports, id, maxEntries
}

// sendN sends n datagrams from ns to dst and returns once they are handed
// to the kernel.
func sendN(t *testing.T, ns *testutil.Netns, dst netip.AddrPort, n int) {
	t.Helper()
	var conn *net.UDPConn
	if err := ns.Do(func() (err error) { conn, err = net.ListenUDP("udp4", nil); return err }); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for i := 0; i < n; i++ {
		if _, err := conn.WriteToUDPAddrPort([]byte("bpfsup upgrade test"), dst); err != nil {
			t.Fatalf("send to %v: %v", dst, err)
		}
	}
}

// flood sends datagrams from one socket to its destinations, round robin,
// as fast as it can: a gap of a few microseconds in a filter lets some
// through.
type flood struct {
	conn *net.UDPConn
	sent atomic.Uint64
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

func startFlood(t *testing.T, ns *testutil.Netns, dsts ...netip.AddrPort) *flood {
	t.Helper()
	f := &flood{stop: make(chan struct{}), done: make(chan struct{})}
	if err := ns.Do(func() (err error) { f.conn, err = net.ListenUDP("udp4", nil); return err }); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(f.done)
		payload := []byte("flood")
		for {
			for _, d := range dsts {
				if _, err := f.conn.WriteToUDPAddrPort(payload, d); err == nil {
					f.sent.Add(1)
				}
			}
			select {
			case <-f.stop:
				return
			default:
			}
		}
	}()
	t.Cleanup(f.Stop)
	return f
}

func (f *flood) Stop() {
	f.once.Do(func() {
		close(f.stop)
		<-f.done
		f.conn.Close()
	})
}

// drain waits until datagrams sent after this call have arrived at r from
// s, so that everything sent before on the same path has been processed.
func drain(t *testing.T, s *testutil.UDPSender, r *testutil.UDPReceiver) {
	t.Helper()
	mark := s.Sent() + 5
	testutil.WaitFor(t, 5*time.Second, "the control stream to pass datagrams sent after the flood", func() bool {
		return r.LastSeq() > mark
	})
}

// countLines counts the log lines of p with msg=msg.
func countLines(p *testutil.Proc, msg string) int {
	return strings.Count(p.Output(), "msg="+msg+" ") + strings.Count(p.Output(), "msg="+msg+"\n")
}

// linkIDsErr is linkIDs for a link that may not be there.
func linkIDsErr(e *testutil.Env, name string) (link.ID, error) {
	info, err := e2e.PinnedAttachmentInfo(pinPath(e, "links", name))
	if err != nil {
		return 0, err
	}
	return info.ID, nil
}
