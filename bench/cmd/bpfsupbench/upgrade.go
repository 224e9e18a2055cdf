package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
)

// Upgrade: dropfilter v1 -> v2 -> v1 ... on the receiving end of a veth
// pair, with drop_ports holding dropPort, while a steady UDP stream
// alternates between dropPort and openPort. Every datagram that reaches the
// receiver's dropPort socket passed the hook unfiltered. The stream is
// checked before every upgrade: traffic reaches openPort, and nothing reaches
// dropPort.
//
//	bpfsup      the object file replaced by the other version (untimed, as a
//	            package manager would), then `bpfsup reload`; the map is
//	            adopted with its contents and the XDP link swaps its program
//	            in place
//	xdp-loader  `xdp-loader unload --all` then `xdp-loader load`, then
//	            drop_ports filled again (a new object has new, empty maps)
//	naive       the new version loaded first with bpftool, reusing the pinned
//	            maps, then `bpftool net detach` and `bpftool net attach`: the
//	            smallest gap a detach-and-attach can have
//
// The time is from the request (the fork of the first command) to all links
// swapped (the last command returned). The unfiltered packets are counted
// from the request to upgradeSettle after it.

const (
	dropPort      = 7001
	openPort      = 7002
	upgradeSettle = 50 * time.Millisecond
)

// UpgradeRow is one upgrade method.
type UpgradeRow struct {
	Method     string    `json:"method"`
	TimeMs     []float64 `json:"time_ms"`
	Time       Stats     `json:"time_stats_ms"`
	ServerMs   []float64 `json:"server_ms,omitempty"` // bpfsup's own "reloaded in"
	Unfiltered []int     `json:"unfiltered"`
	UnfStats   Stats     `json:"unfiltered_stats"`
	Passed     []int     `json:"passed_open_port"` // datagrams to the open port in the same window
	RatePPS    int       `json:"rate_pps"`
}

type upgradeMethod struct {
	name  string
	iface string // receiving end, in nsB
	addr  netip.Addr
	setup func() error
	// prepare, when set, runs before the request, untimed.
	prepare func(version int) error
	upgrade func(version int) (serverMs float64, err error)
}

// udpCounter counts datagrams arriving on one socket.
type udpCounter struct {
	conn *net.UDPConn
	n    atomic.Int64
}

func (c *udpCounter) loop() {
	buf := make([]byte, 2048)
	for {
		if _, err := c.conn.Read(buf); err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		c.n.Add(1)
	}
}

// upgradeRig is the upgrade section's set-up: two network namespaces, a
// veth pair per method between them, and a counting receiver per method
// and port.
type upgradeRig struct {
	nsA, nsB *netns
	// objs are the two versions of the filter.
	objs     [2]string
	methods  []*upgradeMethod
	counters map[netip.AddrPort]*udpCounter
}

func (b *bench) upgradeSection() error {
	rig, err := b.newUpgradeRig()
	if err != nil {
		return err
	}
	b.bpfsupMethod(rig, rig.methods[0])
	rig.xdpLoaderMethod(rig.methods[1])
	b.naiveMethod(rig, rig.methods[2])
	for _, m := range rig.methods {
		if err := m.setup(); err != nil {
			return fmt.Errorf("%s: setup: %w", m.name, err)
		}
	}

	// The stream, from nsA to whichever pair is being upgraded.
	var sconn *net.UDPConn
	if err := inNetns(rig.nsA, func() (err error) {
		sconn, err = net.ListenUDP("udp4", nil)
		return err
	}); err != nil {
		return fmt.Errorf("sender: %w", err)
	}
	cleanups.add(func() { sconn.Close() })
	var target atomic.Pointer[netip.Addr]
	var sent atomic.Int64
	stop := make(chan struct{})
	senderDone := make(chan struct{})
	go func() {
		defer close(senderDone)
		b.send(sconn, &target, &sent, stop)
	}()
	defer func() { close(stop); <-senderDone }()

	rows := make([]*UpgradeRow, len(rig.methods))
	for i, m := range rig.methods {
		rows[i] = &UpgradeRow{Method: m.name, RatePPS: b.rate}
	}
	for r := 0; r < b.reps; r++ {
		version := 1 - r%2 // v2, v1, v2, ...
		for i, m := range rig.methods {
			target.Store(&m.addr)
			if err := b.upgradeOnce(rig, m, version, rows[i]); err != nil {
				return err
			}
		}
	}
	// The last upgrade left the filter working too.
	for _, m := range rig.methods {
		target.Store(&m.addr)
		if err := b.checkFiltering(rig, m); err != nil {
			return fmt.Errorf("%s: after the last upgrade: %w", m.name, err)
		}
	}
	for _, row := range rows {
		row.Time = summarize(row.TimeMs)
		row.UnfStats = summarize(ints(row.Unfiltered))
		b.res.Upgrade = append(b.res.Upgrade, *row)
		logf("upgrade %-24s median %7.2f ms  unfiltered %v", row.Method, row.Time.Median, row.Unfiltered)
	}
	b.res.UpgradeSent = sent.Load()
	return nil
}

// newUpgradeRig makes the namespaces, a veth pair per method (ua<i> in nsA,
// ub<i> in nsB, 10.77.<i>.0/24) and the receivers, one socket per port and
// pair.
func (b *bench) newUpgradeRig() (*upgradeRig, error) {
	nsA, err := newNetns(b.id, "send")
	if err != nil {
		return nil, err
	}
	nsB, err := newNetns(b.id, "recv")
	if err != nil {
		return nil, err
	}
	rig := &upgradeRig{
		nsA: nsA, nsB: nsB,
		objs:     [2]string{filepath.Join(b.repo, "bpf/dropfilter.bpf.o"), filepath.Join(b.repo, "bpf/dropfilter_v2.bpf.o")},
		counters: map[netip.AddrPort]*udpCounter{},
	}
	for i := 0; i < 3; i++ {
		ua, ub := fmt.Sprintf("ua%d", i), fmt.Sprintf("ub%d", i)
		if _, err := run("ip", "link", "add", ua, "netns", nsA.name, "type", "veth", "peer", "name", ub, "netns", nsB.name); err != nil {
			return nil, err
		}
		if err := nsA.ipBatch([]string{fmt.Sprintf("addr add 10.77.%d.1/24 dev %s", i, ua), "link set " + ua + " up"}); err != nil {
			return nil, err
		}
		if err := nsB.ipBatch([]string{fmt.Sprintf("addr add 10.77.%d.2/24 dev %s", i, ub), "link set " + ub + " up"}); err != nil {
			return nil, err
		}
		rig.methods = append(rig.methods, &upgradeMethod{iface: ub, addr: netip.AddrFrom4([4]byte{10, 77, byte(i), 2})})
	}
	for _, m := range rig.methods {
		for _, port := range []uint16{dropPort, openPort} {
			ap := netip.AddrPortFrom(m.addr, port)
			c := &udpCounter{}
			if err := inNetns(nsB, func() (err error) {
				c.conn, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(ap))
				return err
			}); err != nil {
				return nil, fmt.Errorf("receiver %s: %w", ap, err)
			}
			_ = c.conn.SetReadBuffer(4 << 20)
			cleanups.add(func() { c.conn.Close() })
			go c.loop()
			rig.counters[ap] = c
		}
	}
	return rig, nil
}

// bpfsupMethod makes m upgrade with bpfsup: the object file the config names
// replaced, as a package manager would, then `bpfsup reload`.
func (b *bench) bpfsupMethod(rig *upgradeRig, m *upgradeMethod) {
	e := b.newBpfsupEnv("upgrade")
	cfg := filepath.Join(b.work, "upgrade.toml")
	installed := filepath.Join(b.work, "df.bpf.o")
	installVersion := func(version int) error {
		data, err := os.ReadFile(rig.objs[version])
		if err != nil {
			return err
		}
		tmp := installed + ".new"
		if err := os.WriteFile(tmp, data, 0o644); err != nil {
			return err
		}
		return os.Rename(tmp, installed)
	}
	reloadedRE := regexp.MustCompile(`reloaded in (\S+)`)
	var sup *proc // bpfsup run, once set up
	m.name = "bpfsup reload"
	m.setup = func() error {
		if err := installVersion(0); err != nil {
			return err
		}
		if err := writeConfig(cfg, []cfgObject{{Path: installed, Name: "df",
			Attach: []cfgAttach{{Program: "xdp_drop", Hook: "xdp:" + m.iface}}}}); err != nil {
			return err
		}
		c := e.cmd("run", "-c", cfg, "--netns", rig.nsB.path, "--restart", "never", "--on-upgrade", "none",
			"--", b.childBin, "wait")
		b.ready.drain()
		p, err := startProc("bpfsup run", c, filepath.Join(b.work, "bpfsup-upgrade.log"))
		if err != nil {
			return err
		}
		sup = p
		if _, err := b.ready.waitStart(p, time.Minute); err != nil {
			return err
		}
		return putDropPort(filepath.Join(e.pinRoot, "df/maps/drop_ports"))
	}
	m.prepare = installVersion
	m.upgrade = func(version int) (float64, error) {
		out, err := runCmd(e.cmd("reload"))
		if err != nil {
			// What the supervisor said, to tell a refused reload from
			// a supervisor that is gone.
			return 0, fmt.Errorf("%w%s", err, sup.logTail())
		}
		match := reloadedRE.FindStringSubmatch(out)
		if match == nil {
			return 0, fmt.Errorf("bpfsup reload: unexpected output %q", out)
		}
		d, err := time.ParseDuration(match[1])
		return ms(int64(d)), err
	}
}

// xdpLoaderMethod makes m upgrade with xdp-loader: unload, load, and the
// new object's empty map filled again.
func (rig *upgradeRig) xdpLoaderMethod(m *upgradeMethod) {
	nsB := rig.nsB
	m.name = "xdp-loader unload+load"
	m.setup = func() error {
		cleanups.add(func() { _ = nsB.ipBatch([]string{"link set dev " + m.iface + " xdp off"}) })
		if _, err := runCmd(nsenter(nsB, "xdp-loader", "load", "-m", "native", m.iface, rig.objs[0])); err != nil {
			return err
		}
		return fillXDPDropPorts(nsB, m.iface)
	}
	m.upgrade = func(version int) (float64, error) {
		script := fmt.Sprintf("xdp-loader unload %s --all && xdp-loader load -m native %s %s", m.iface, m.iface, rig.objs[version])
		if _, err := runCmd(nsenter(nsB, "sh", "-c", script)); err != nil {
			return 0, err
		}
		return 0, fillXDPDropPorts(nsB, m.iface)
	}
}

// naiveMethod makes m upgrade the naive way with bpftool: the new version
// loaded with the pinned maps, then detach and attach.
func (b *bench) naiveMethod(rig *upgradeRig, m *upgradeMethod) {
	nsB := rig.nsB
	m.name = "naive detach+attach"
	naiveDir := filepath.Join(b.pinBase, "naive")
	naiveGen := 0
	m.setup = func() error {
		cleanups.add(func() {
			_ = nsB.ipBatch([]string{"link set dev " + m.iface + " xdp off"})
			os.RemoveAll(naiveDir)
		})
		if err := os.MkdirAll(naiveDir, 0o700); err != nil {
			return err
		}
		prog := filepath.Join(naiveDir, "prog0")
		if _, err := run("bpftool", "prog", "load", rig.objs[0], prog, "pinmaps", filepath.Join(naiveDir, "maps")); err != nil {
			return err
		}
		if _, err := runCmd(nsenter(nsB, "bpftool", "net", "attach", "xdp", "pinned", prog, "dev", m.iface)); err != nil {
			return err
		}
		return putDropPort(filepath.Join(naiveDir, "maps/drop_ports"))
	}
	m.upgrade = func(version int) (float64, error) {
		old := filepath.Join(naiveDir, fmt.Sprintf("prog%d", naiveGen))
		naiveGen++
		prog := filepath.Join(naiveDir, fmt.Sprintf("prog%d", naiveGen))
		maps := filepath.Join(naiveDir, "maps")
		script := strings.Join([]string{
			fmt.Sprintf("bpftool prog load %s %s map name drop_ports pinned %s/drop_ports map name drop_count pinned %s/drop_count",
				rig.objs[version], prog, maps, maps),
			"bpftool net detach xdp dev " + m.iface,
			fmt.Sprintf("bpftool net attach xdp pinned %s dev %s", prog, m.iface),
		}, " && ")
		if _, err := runCmd(nsenter(nsB, "sh", "-c", script)); err != nil {
			return 0, err
		}
		return 0, os.Remove(old)
	}
}

// checkFiltering checks, with the stream on m, that traffic reaches the open
// port and none reaches the dropped one.
func (b *bench) checkFiltering(rig *upgradeRig, m *upgradeMethod) error {
	drop, open := rig.counters[netip.AddrPortFrom(m.addr, dropPort)], rig.counters[netip.AddrPortFrom(m.addr, openPort)]
	p0, o0 := drop.n.Load(), open.n.Load()
	if err := waitFor(5*time.Second, func() bool { return open.n.Load()-o0 >= int64(b.rate/10) }); err != nil {
		return fmt.Errorf("no traffic to the open port: %d datagrams in 5s", open.n.Load()-o0)
	}
	if d := drop.n.Load() - p0; d != 0 {
		return fmt.Errorf("%d datagrams reached the dropped port: the filter is not in place", d)
	}
	return nil
}

// upgradeOnce upgrades m to version with the stream on it, and adds the
// time taken and the datagrams let through to row.
func (b *bench) upgradeOnce(rig *upgradeRig, m *upgradeMethod, version int, row *UpgradeRow) error {
	if err := b.checkFiltering(rig, m); err != nil {
		return fmt.Errorf("%s: before the upgrade: %w", m.name, err)
	}
	before, err := rig.nsB.xdpProgs()
	if err != nil {
		return err
	}
	if m.prepare != nil {
		if err := m.prepare(version); err != nil {
			return fmt.Errorf("%s: prepare v%d: %w", m.name, version+1, err)
		}
	}
	drop, open := rig.counters[netip.AddrPortFrom(m.addr, dropPort)], rig.counters[netip.AddrPortFrom(m.addr, openPort)]
	pBefore, oBefore := drop.n.Load(), open.n.Load()
	t0 := mono()
	server, err := m.upgrade(version)
	t1 := mono()
	if err != nil {
		return fmt.Errorf("%s: upgrade to v%d: %w", m.name, version+1, err)
	}
	// Datagrams already past the hook reach their socket within
	// microseconds; this leaves them ample time.
	time.Sleep(upgradeSettle)
	pAfter, oAfter := drop.n.Load(), open.n.Load()

	after, err := rig.nsB.xdpProgs()
	if err != nil {
		return err
	}
	x := after[m.iface]
	if x.ProgName != "xdp_drop" || x.Mode != 1 || x.ProgID == before[m.iface].ProgID {
		return fmt.Errorf("%s: after the upgrade %s runs %q (id %d, mode %d), before id %d: not upgraded",
			m.name, m.iface, x.ProgName, x.ProgID, x.Mode, before[m.iface].ProgID)
	}
	row.TimeMs = append(row.TimeMs, ms(t1-t0))
	if server != 0 {
		row.ServerMs = append(row.ServerMs, server)
	}
	row.Unfiltered = append(row.Unfiltered, int(pAfter-pBefore))
	row.Passed = append(row.Passed, int(oAfter-oBefore))
	return nil
}

// send sends datagrams to target's dropPort and openPort in turn at b.rate
// per second until stop is closed, for at most 10 minutes.
func (b *bench) send(conn *net.UDPConn, target *atomic.Pointer[netip.Addr], sent *atomic.Int64, stop <-chan struct{}) {
	payload := []byte("bpfsupbench")
	start := time.Now()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	var n int64
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		el := time.Since(start)
		if el > 10*time.Minute {
			return
		}
		due := int64(el.Seconds() * float64(b.rate))
		// After a stall, catch up by at most 50 ms worth, not in one burst.
		if due-n > int64(b.rate/20) {
			n = due - int64(b.rate/20)
		}
		a := target.Load()
		for ; n < due; n++ {
			if a == nil {
				continue
			}
			port := uint16(dropPort)
			if n%2 == 1 {
				port = openPort
			}
			if _, err := conn.WriteToUDPAddrPort(payload, netip.AddrPortFrom(*a, port)); err == nil {
				sent.Add(1)
			}
		}
	}
}

// putDropPort puts dropPort into a pinned drop_ports map.
func putDropPort(pin string) error {
	m, err := ebpf.LoadPinnedMap(pin, nil)
	if err != nil {
		return fmt.Errorf("open drop_ports: %w", err)
	}
	defer m.Close()
	if err := m.Put(uint16(dropPort), uint8(1)); err != nil {
		return fmt.Errorf("put into drop_ports: %w", err)
	}
	return nil
}

// fillXDPDropPorts finds the drop_ports map of the XDP program on iface and
// puts dropPort into it: what a script must do after loading a new object.
func fillXDPDropPorts(ns *netns, iface string) error {
	progs, err := ns.xdpProgs()
	if err != nil {
		return err
	}
	x, ok := progs[iface]
	if !ok {
		return fmt.Errorf("%s: no XDP program", iface)
	}
	p, err := ebpf.NewProgramFromID(ebpf.ProgramID(x.ProgID))
	if err != nil {
		return fmt.Errorf("program %d: %w", x.ProgID, err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return err
	}
	ids, _ := info.MapIDs()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			return fmt.Errorf("map %d: %w", id, err)
		}
		mi, err := m.Info()
		if err == nil && mi.Name == "drop_ports" {
			err = m.Put(uint16(dropPort), uint8(1))
			m.Close()
			return err
		}
		m.Close()
	}
	return fmt.Errorf("program %d has no drop_ports map", x.ProgID)
}

// waitFor polls cond every millisecond until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s", timeout)
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}
