package crashtest

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/status"

	"github.com/cilium/ebpf"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
	"github.com/bpfsup/bpfsup/pinstore"
)

// objName is the object's name in the pin layout: the object file is always
// called dropfilter.bpf.o, whichever version it holds, so that v1 and v2 are
// one object and a change of its contents is an upgrade.
const objName = "dropfilter"

// Versions of the object file.
const (
	v1 = "dropfilter"
	v2 = "dropfilter_v2"
)

// Seeded map contents, to check that they survive crashes and upgrades.
const (
	extraPort   = 7777
	seededCount = uint64(1) << 40
)

// netRig is the network the tests filter: a veth pair between two
// namespaces, the filter on the receiving end (ifB in nsB), and a UDP stream
// from nsA to a dropped port and an allowed port of ifB.
type netRig struct {
	nsA, nsB *testutil.Netns
	ifA, ifB testutil.Veth
	xdp      *xdpQuery
	traffic  *traffic
}

func newNetRig(t testing.TB) *netRig {
	t.Helper()
	testutil.RequireRoot(t)
	n := &netRig{nsA: testutil.MustNetns(t, "crash-a"), nsB: testutil.MustNetns(t, "crash-b")}
	n.ifA, n.ifB = testutil.MustVethPair(t, n.nsA, n.nsB)
	n.xdp = newXDPQuery(t, n.nsB)
	n.traffic = startTraffic(t, n)
	return n
}

// progID is the XDP program on ifB now, 0 for none.
func (n *netRig) progID(t testing.TB) uint32 {
	t.Helper()
	id, err := n.xdp.progID(n.ifB.Index)
	if err != nil {
		t.Fatalf("xdp program of %s: %v", n.ifB.Name, err)
	}
	return id
}

// traffic sends, every millisecond, one datagram to the dropped port and one
// to the allowed port of ifB, both carrying the same sequence number, and
// records the highest number that arrives on each.
type traffic struct {
	send               *net.UDPConn
	drop, pass         *net.UDPConn
	dropPort, passPort int
	seq                atomic.Uint64 // last number sent, or being sent
	dropMax, passMax   atomic.Uint64 // highest number received
	stop               chan struct{}
	wg                 sync.WaitGroup
}

func startTraffic(t testing.TB, n *netRig) *traffic {
	t.Helper()
	tr := &traffic{stop: make(chan struct{})}
	err := n.nsB.Do(func() (err error) {
		if tr.drop, err = net.ListenUDP("udp4", &net.UDPAddr{}); err != nil {
			return err
		}
		tr.pass, err = net.ListenUDP("udp4", &net.UDPAddr{})
		return err
	})
	if err == nil {
		err = n.nsA.Do(func() (err error) {
			tr.send, err = net.ListenUDP("udp4", nil)
			return err
		})
	}
	if err != nil {
		for _, c := range []*net.UDPConn{tr.drop, tr.pass, tr.send} {
			if c != nil {
				c.Close()
			}
		}
		t.Fatalf("traffic sockets: %v", err)
	}
	tr.dropPort = tr.drop.LocalAddr().(*net.UDPAddr).Port
	tr.passPort = tr.pass.LocalAddr().(*net.UDPAddr).Port
	dst := func(port int) *net.UDPAddr { return &net.UDPAddr{IP: n.ifB.Addr.AsSlice(), Port: port} }
	tr.wg.Add(3)
	go tr.receive(tr.drop, &tr.dropMax)
	go tr.receive(tr.pass, &tr.passMax)
	go func() {
		defer tr.wg.Done()
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		buf := make([]byte, 8)
		for {
			// Counted before it is sent: a sampler that sees the filter
			// and then reads seq knows that every datagram above it
			// was sent after the filter was on the hook. Counted after,
			// a datagram sent just before the attach could carry the
			// number after the one the sampler read, and arrive.
			seq := tr.seq.Add(1)
			binary.BigEndian.PutUint64(buf, seq)
			_, _ = tr.send.WriteToUDP(buf, dst(tr.dropPort))
			_, _ = tr.send.WriteToUDP(buf, dst(tr.passPort))
			select {
			case <-tr.stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() {
		close(tr.stop)
		tr.send.Close()
		tr.drop.Close()
		tr.pass.Close()
		tr.wg.Wait()
	})
	return tr
}

func (tr *traffic) receive(c *net.UDPConn, max *atomic.Uint64) {
	defer tr.wg.Done()
	buf := make([]byte, 64)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return
		}
		if n == 8 {
			if seq := binary.BigEndian.Uint64(buf); seq > max.Load() {
				max.Store(seq)
			}
		}
	}
}

// waitPassing waits until a datagram sent from now on arrives on the allowed
// port: the filter lets allowed traffic through.
func (tr *traffic) waitPassing(t testing.TB) {
	t.Helper()
	from := tr.seq.Load()
	testutil.WaitFor(t, 5*time.Second, "allowed traffic to pass", func() bool { return tr.passMax.Load() > from })
}

// sampler watches the hook every millisecond: once the hook has had the
// filter, it must never be without a program again, and no datagram sent to
// the dropped port after that moment may arrive.
//
// The hook has had the filter from the first sample that sees a program on
// ifB while a pin of bpfsup's link exists (in place or staged). A link that
// is attached but not pinned yet lives only as long as the process that
// attached it: a crash right after the very first attach (links/attached on
// a first start) takes it away, and no ordering can prevent that, since a
// link can be pinned only once it exists. From its pin on, a link is durable,
// and that is where the promise begins.
type sampler struct {
	n        *netRig
	pins     []string
	stop     chan struct{}
	done     chan struct{}
	samples  int
	latched  bool
	latchSeq uint64
	empties  int
	emptyAt  time.Duration // since latching, first empty sample
	maxGap   time.Duration
	latchAt  time.Time
	err      error
}

func (n *netRig) startSampler(t testing.TB, linkPins ...string) *sampler {
	t.Helper()
	s := &sampler{n: n, pins: linkPins, stop: make(chan struct{}), done: make(chan struct{})}
	go s.run()
	t.Cleanup(func() { s.halt() })
	return s
}

func (s *sampler) run() {
	defer close(s.done)
	last := time.Now()
	for {
		select {
		case <-s.stop:
			return
		default:
		}
		pinned := false
		for _, p := range s.pins {
			if pinstore.Exists(p) {
				pinned = true
			}
		}
		id, err := s.n.xdp.progID(s.n.ifB.Index)
		now := time.Now()
		if err != nil {
			if s.err == nil {
				s.err = err
			}
		} else {
			s.samples++
			s.maxGap = max(s.maxGap, now.Sub(last))
			last = now
			switch {
			case !s.latched && id != 0 && pinned:
				s.latched, s.latchSeq, s.latchAt = true, s.n.traffic.seq.Load(), now
			case s.latched && id == 0:
				if s.empties == 0 {
					s.emptyAt = now.Sub(s.latchAt)
				}
				s.empties++
			}
		}
		// The sampling interval, not a wait for anything.
		time.Sleep(time.Millisecond)
	}
}

func (s *sampler) halt() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
}

// check stops the sampler and checks what it saw.
func (s *sampler) check(t testing.TB) {
	t.Helper()
	s.halt()
	if s.err != nil {
		t.Errorf("sampling the hook: %v", s.err)
	}
	if !s.latched {
		t.Errorf("the hook never had the filter (%d samples)", s.samples)
		return
	}
	if s.empties > 0 {
		t.Errorf("the hook had no program in %d of %d samples, first %v after it had the filter", s.empties, s.samples, s.emptyAt)
	}
	if got := s.n.traffic.dropMax.Load(); got > s.latchSeq {
		t.Errorf("datagram %d to the dropped port arrived; the filter was on the hook from datagram %d on", got, s.latchSeq)
	}
	t.Logf("hook sampled %d times, longest interval %v", s.samples, s.maxGap.Round(100*time.Microsecond))
}

// rig is one bpfsup installation on the network: a private pin root and state
// directory and an object file whose contents the test swaps.
type rig struct {
	*netRig
	env     *testutil.Env
	objPath string
	version string
	// config, when set, is a configuration file that says the object and
	// its attachment (and map settings), instead of -o and -a.
	config string
}

func newRig(t testing.TB, n *netRig) *rig {
	t.Helper()
	// Runs after MustEnv's `bpfsup down`: the kernel releases a link whose
	// last pin is removed from a work queue, a moment later, and the next
	// rig on this network must find the hook free.
	t.Cleanup(func() {
		var id uint32
		free := testutil.Poll(10*time.Second, func() bool {
			var err error
			id, err = n.xdp.progID(n.ifB.Index)
			return err != nil || id == 0
		})
		if !free {
			t.Errorf("%s still runs XDP program %d after bpfsup down", n.ifB.Name, id)
		}
	})
	r := &rig{netRig: n, env: testutil.MustEnv(t), objPath: filepath.Join(t.TempDir(), objName+".bpf.o")}
	r.setObject(t, v1)
	return r
}

// setObject replaces the object file atomically with the given version.
func (r *rig) setObject(t testing.TB, version string) {
	t.Helper()
	e2e.PutObject(t, r.objPath, version)
	r.version = version
}

// migrateDropPorts makes the object dropfilter_bigmap, whose drop_ports is
// bigger, configured to migrate drop_ports by copying it.
func (r *rig) migrateDropPorts(t testing.TB) {
	t.Helper()
	r.setObject(t, "dropfilter_bigmap")
	r.config = filepath.Join(filepath.Dir(r.objPath), "bpfsup.toml")
	cfg := fmt.Sprintf("[[object]]\npath = %q\n[[object.attach]]\nprogram = \"xdp_drop\"\nhook = \"xdp:%s\"\n"+
		"[object.maps.drop_ports]\nmigrate = \"copy\"\n", r.objPath, r.ifB.Name)
	if err := os.WriteFile(r.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
}

func (r *rig) objDir() string { return filepath.Join(r.env.PinRoot, objName) }

func (r *rig) pinPath(kind, name string) string { return filepath.Join(r.objDir(), kind, name) }

// linkPins are where the filter's link may be pinned: in place, or staged.
func (r *rig) linkPins() []string {
	return []string{r.pinPath("links", "xdp_drop"), r.pinPath("staging", "links-xdp_drop")}
}

// runArgs are bpfsup run's arguments for the filter, with extra flags.
func (r *rig) runArgs(extra ...string) []string {
	args := r.env.Args("run", "--netns", r.nsB.Path, "-o", r.objPath, "-a", "xdp_drop@xdp:"+r.ifB.Name,
		"--stop-timeout", "5s")
	if r.config != "" {
		args = r.env.Args("run", "--netns", r.nsB.Path, "-c", r.config, "--stop-timeout", "5s")
	}
	args = append(args, extra...)
	return append(args, "--", "sleep", "3600")
}

// start starts bpfsup run with extra environment variables and flags.
func (r *rig) start(t testing.TB, env []string, extra ...string) *testutil.Proc {
	t.Helper()
	cmd := exec.Command(r.env.Bin, r.runArgs(extra...)...)
	cmd.Env = append(os.Environ(), env...)
	return testutil.StartProc(t, cmd)
}

// startReady starts bpfsup and waits until its child runs.
func (r *rig) startReady(t testing.TB, extra ...string) *testutil.Proc {
	t.Helper()
	p := r.start(t, nil, extra...)
	p.WaitOutput(t, "child started", 20*time.Second)
	return p
}

// kill SIGKILLs p and waits until it is gone.
func kill(t testing.TB, p *testutil.Proc) {
	t.Helper()
	p.Kill(syscall.SIGKILL)
	p.Wait(t, 10*time.Second)
}

// stop SIGTERMs p and waits for it to exit.
func stop(t testing.TB, p *testutil.Proc) {
	t.Helper()
	p.Kill(syscall.SIGTERM)
	p.Wait(t, 20*time.Second)
}

// diedOfSIGKILL reports whether the exited p was killed by SIGKILL.
func diedOfSIGKILL(p *testutil.Proc) bool {
	ws, ok := p.Cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// exitCode waits up to timeout for p to exit and returns its exit status.
func exitCode(t testing.TB, p *testutil.Proc, timeout time.Duration) int {
	t.Helper()
	return p.Wait(t, timeout)
}

// seedDropPorts pins a drop_ports map holding the rig's dropped port and
// extraPort where bpfsup will look for it, before bpfsup first starts: the
// filter drops from its first attach on. It writes the manifest a first
// install that made the map and was killed right after pinning it would
// have left (write-ahead), so that bpfsup adopts the map as its own: a map
// no manifest records is not bpfsup's, and is refused. Returns the map's id.
func (r *rig) seedDropPorts(t testing.TB) uint32 {
	t.Helper()
	return r.seedDropPortsOnly(t, false)
}

// seedDropPortsMapOnly pins such a map and writes no manifest: another
// tool's map, exactly like the object's.
func (r *rig) seedDropPortsMapOnly(t testing.TB) uint32 {
	t.Helper()
	return r.seedDropPortsOnly(t, true)
}

func (r *rig) seedDropPortsOnly(t testing.TB, mapOnly bool) uint32 {
	t.Helper()
	spec, err := ebpf.LoadCollectionSpec(testutil.BPFObject(v1))
	if err != nil {
		t.Fatal(err)
	}
	ms := spec.Maps["drop_ports"].Copy()
	ms.Pinning = ebpf.PinNone
	m, err := ebpf.NewMap(ms)
	if err != nil {
		t.Fatalf("create drop_ports: %v", err)
	}
	defer m.Close()
	for _, port := range []uint16{uint16(r.traffic.dropPort), extraPort} {
		if err := m.Put(port, uint8(1)); err != nil {
			t.Fatal(err)
		}
	}
	path := r.pinPath("maps", "drop_ports")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := m.Pin(path); err != nil {
		t.Fatalf("pin drop_ports: %v", err)
	}
	id := uint32(e2e.MapID(t, m))
	if mapOnly {
		return id
	}
	man, err := json.Marshal(pinstore.Manifest{Version: pinstore.ManifestVersion, Object: objName, PinRoot: r.env.PinRoot,
		Maps: map[string]pinstore.MapRecord{"drop_ports": {ID: id, Path: path, Made: true}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(r.env.StateDir, objName+".json"), man, 0o600); err != nil {
		t.Fatal(err)
	}
	return id
}

// setDropCount writes drop_count[0].
func (r *rig) setDropCount(t testing.TB, v uint64) {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(r.pinPath("maps", "drop_count"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Put(uint32(0), v); err != nil {
		t.Fatal(err)
	}
}

// contents are the filter's map contents: the dropped ports, sorted, and
// the drop count.
type contents struct {
	ports []uint16
	count uint64
}

func (r *rig) contents(t testing.TB) contents {
	t.Helper()
	var c contents
	m, err := ebpf.LoadPinnedMap(r.pinPath("maps", "drop_ports"), nil)
	if err != nil {
		t.Fatal(err)
	}
	var port uint16
	var v uint8
	it := m.Iterate()
	for it.Next(&port, &v) {
		c.ports = append(c.ports, port)
	}
	m.Close()
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(c.ports)
	m, err = ebpf.LoadPinnedMap(r.pinPath("maps", "drop_count"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Lookup(uint32(0), &c.count); err != nil {
		t.Fatal(err)
	}
	return c
}

func (r *rig) wantPorts() []uint16 {
	p := []uint16{uint16(r.traffic.dropPort), extraPort}
	slices.Sort(p)
	return p
}

// state is what is installed, by kernel id.
type state struct {
	maps     map[string]uint32
	progs    map[string]uint32
	link     uint32
	linkProg uint32
}

// checkConverged checks that what is pinned and attached is exactly the
// configuration, for the object version the file holds: the expected pins
// and nothing else (no staging debris, no orphans), programs with the
// version's instructions using the pinned maps, the link pinned and on ifB
// running the pinned program (as the kernel's own view of ifB confirms), a
// manifest that agrees with the kernel, and a status without problems.
func (r *rig) checkConverged(t testing.TB) state {
	t.Helper()
	return r.checkState(t, true)
}

// checkState is checkConverged, with `bpfsup status` asked too or not.
func (r *rig) checkState(t testing.TB, withStatus bool) state {
	t.Helper()
	if got := e2e.DirEntries(t, r.env.PinRoot); !slices.Equal(got, []string{objName}) {
		t.Errorf("pin root holds %v, want only %s", got, objName)
	}
	for dir, want := range map[string][]string{
		"":         {"links", "maps", "programs", "staging"},
		"maps":     {"drop_count", "drop_ports"},
		"programs": {"tc_drop", "xdp_drop"},
		"links":    {"xdp_drop"},
		"staging":  nil,
	} {
		if got := e2e.DirEntries(t, filepath.Join(r.objDir(), dir)); !slices.Equal(got, want) {
			t.Errorf("%s/%s holds %v, want %v", objName, dir, got, want)
		}
	}
	if t.Failed() {
		t.FailNow()
	}

	st := state{maps: map[string]uint32{}, progs: map[string]uint32{}}
	for _, name := range []string{"drop_count", "drop_ports"} {
		m, err := ebpf.LoadPinnedMap(r.pinPath("maps", name), nil)
		if err != nil {
			t.Fatal(err)
		}
		st.maps[name] = uint32(e2e.MapID(t, m))
		m.Close()
	}
	spec, err := ebpf.LoadCollectionSpec(r.objPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"tc_drop", "xdp_drop"} {
		p, err := ebpf.LoadPinnedProgram(r.pinPath("programs", name), nil)
		if err != nil {
			t.Fatal(err)
		}
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		st.progs[name] = uint32(e2e.ProgramID(t, p))
		p.Close()
		if err := spec.Programs[name].Compatible(info); err != nil {
			t.Errorf("program %s (id %d) is not %s's: %v", name, st.progs[name], r.version, err)
		}
		ids, _ := info.MapIDs()
		for mname, mid := range st.maps {
			if !slices.Contains(ids, ebpf.MapID(mid)) {
				t.Errorf("program %s uses maps %v, not the pinned %s (id %d)", name, ids, mname, mid)
			}
		}
	}
	info := e2e.PinnedLinkInfo(t, r.pinPath("links", "xdp_drop"))
	st.link, st.linkProg = uint32(info.ID), uint32(info.Program)
	if st.linkProg != st.progs["xdp_drop"] {
		t.Errorf("link %d runs program %d, not the pinned xdp_drop %d", st.link, st.linkProg, st.progs["xdp_drop"])
	}
	if xi := info.XDP(); xi == nil || int(xi.Ifindex) != r.ifB.Index {
		t.Errorf("link %d is not on %s (ifindex %d): %+v", st.link, r.ifB.Name, r.ifB.Index, xi)
	}
	if got := r.progID(t); got != st.progs["xdp_drop"] {
		t.Errorf("%s runs XDP program %d, not the pinned xdp_drop %d", r.ifB.Name, got, st.progs["xdp_drop"])
	}

	man, err := pinstore.Store{Root: r.env.PinRoot, StateDir: r.env.StateDir}.ReadManifest(objName)
	if err != nil || man == nil {
		t.Fatalf("manifest: %v (nil: %v)", err, man == nil)
	}
	for name, id := range st.maps {
		if man.Maps[name].ID != id {
			t.Errorf("manifest says map %s is %d, the pin is %d", name, man.Maps[name].ID, id)
		}
	}
	for name, id := range st.progs {
		if man.Programs[name].ID != id {
			t.Errorf("manifest says program %s is %d, the pin is %d", name, man.Programs[name].ID, id)
		}
	}
	if man.Links["xdp_drop"].ID != st.link {
		t.Errorf("manifest says link xdp_drop is %d, the pin is %d", man.Links["xdp_drop"].ID, st.link)
	}

	if !withStatus {
		return st
	}
	o := r.status(t)
	if len(o.Problems) > 0 {
		t.Errorf("status reports problems: %q", o.Problems)
	}
	if len(o.Links) != 1 || o.Links[0].State != "attached" {
		t.Errorf("status links: %+v", o.Links)
	}
	return st
}

// status is `bpfsup status --json` of the object.
func (r *rig) status(t testing.TB) status.ObjectStatus {
	t.Helper()
	return e2e.FindObject(t, e2e.Status(t, r.env), objName)
}

// readTrace reads the steps a run traced (BPFSUP_TEST_CRASH_TRACE).
func readTrace(t testing.TB, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Fields(string(bytes.TrimSpace(data)))
}

// occurrences turns a trace into crash targets STEP#N, in trace order.
func occurrences(trace []string) []string {
	seen := map[string]int{}
	var out []string
	for _, step := range trace {
		seen[step]++
		out = append(out, fmt.Sprintf("%s#%d", step, seen[step]))
	}
	return out
}
