package main

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
)

// Program statistics: what `--program-stats` costs each packet. bpfsup
// runs dropfilter.bpf.o's xdp_drop on a veth, in blocks that take turns:
// without --program-stats, then with (the kernel counts while bpfsup
// holds its BPF_ENABLE_STATS fd). In each block the pinned program runs
// statsRepeat times per sample on a UDP packet to a port in drop_ports
// (BPF_PROG_TEST_RUN: the program and the kernel's accounting around it,
// as for a packet off the wire, without the network stack's noise), and
// the kernel's own time per run is the sample. The cost of statistics is
// the difference of the medians; with statistics on, the kernel's run
// count and run time give its own view of a run.

// StatsCost is the program statistics comparison.
type StatsCost struct {
	Repeat int       `json:"repeat"`
	OffNs  []float64 `json:"off_ns_per_run"`
	OnNs   []float64 `json:"on_ns_per_run"`
	Off    Stats     `json:"off_stats_ns"`
	On     Stats     `json:"on_stats_ns"`
	// KernelNs is run_time_ns / run_cnt over the "on" blocks: what the
	// statistics say a run of xdp_drop costs.
	KernelNs float64 `json:"kernel_ns_per_run"`
}

const (
	statsBlocks  = 6
	statsSamples = 8
	statsRepeat  = 1000000
	statsPort    = 9999
)

func (b *bench) statsSection() error {
	e := b.newBpfsupEnv("stats")
	cfg := filepath.Join(b.work, "stats.toml")
	if err := writeConfig(cfg, []cfgObject{{Path: filepath.Join(b.repo, "bpf", "dropfilter.bpf.o"), Name: "df",
		Attach: []cfgAttach{{Program: "xdp_drop", Hook: "xdp:" + b.ifaces[0]}}}}); err != nil {
		return err
	}
	res := &StatsCost{Repeat: statsRepeat}
	var runs, runNs uint64
	for blk := 0; blk < statsBlocks; blk++ {
		on := blk%2 == 1
		args := []string{"-c", cfg, "--netns", b.rns.path, "--restart", "never"}
		if on {
			args = append(args, "--program-stats")
		}
		c := e.cmd("run", append(args, "--", b.childBin, "wait")...)
		b.ready.drain()
		p, err := startProc("bpfsup run", c, filepath.Join(b.work, "bpfsup-stats.log"))
		if err != nil {
			return err
		}
		if _, err := b.ready.waitStart(p, time.Minute); err != nil {
			p.stop(10 * time.Second)
			return err
		}
		samples, r, ns, err := b.statsBlock(e)
		p.stop(10 * time.Second)
		if err != nil {
			return err
		}
		if on {
			res.OnNs = append(res.OnNs, samples...)
			runs, runNs = runs+r, runNs+ns
		} else {
			res.OffNs = append(res.OffNs, samples...)
		}
	}
	res.Off, res.On = summarize(res.OffNs), summarize(res.OnNs)
	if runs > 0 {
		res.KernelNs = float64(runNs) / float64(runs)
	}
	b.res.ProgramStats = res
	logf("program stats: xdp_drop %.1f ns/packet off, %.1f ns on (+%.1f ns); the kernel's own count: %.1f ns/run",
		res.Off.Median, res.On.Median, res.On.Median-res.Off.Median, res.KernelNs)
	return nil
}

// statsBlock measures xdp_drop as pinned in e: statsSamples samples of
// statsRepeat runs, in ns per run, and what the kernel counted meanwhile.
func (b *bench) statsBlock(e *bpfsupEnv) (samples []float64, runs, runNs uint64, err error) {
	prog, err := ebpf.LoadPinnedProgram(filepath.Join(e.pinRoot, "df", "programs", "xdp_drop"), nil)
	if err != nil {
		return nil, 0, 0, err
	}
	defer prog.Close()
	ports, err := ebpf.LoadPinnedMap(filepath.Join(e.pinRoot, "df", "maps", "drop_ports"), nil)
	if err != nil {
		return nil, 0, 0, err
	}
	defer ports.Close()
	if err := ports.Put(uint16(statsPort), uint8(1)); err != nil {
		return nil, 0, 0, fmt.Errorf("drop_ports: %w", err)
	}
	before, err := prog.Stats()
	if err != nil {
		return nil, 0, 0, err
	}
	pkt := udpPacket(statsPort)
	for i := 0; i < statsSamples; i++ {
		ret, per, err := prog.Benchmark(pkt, statsRepeat, nil)
		if err != nil {
			return nil, 0, 0, fmt.Errorf("test run of xdp_drop: %w", err)
		}
		if ret != 1 { // XDP_DROP
			return nil, 0, 0, fmt.Errorf("xdp_drop returned %d for a packet to port %d, want XDP_DROP (1)", ret, statsPort)
		}
		samples = append(samples, float64(per.Nanoseconds()))
		if per < time.Nanosecond {
			// Benchmark rounds to whole nanoseconds: below that, the
			// figure would mean nothing.
			return nil, 0, 0, fmt.Errorf("xdp_drop ran in under a nanosecond")
		}
	}
	after, err := prog.Stats()
	if err != nil {
		return nil, 0, 0, err
	}
	return samples, after.RunCount - before.RunCount, uint64(after.Runtime - before.Runtime), nil
}

// udpPacket is an Ethernet, IPv4 and UDP packet to port, with 18 bytes of
// payload.
func udpPacket(port uint16) []byte {
	pkt := make([]byte, 14+20+8+18)
	binary.BigEndian.PutUint16(pkt[12:], 0x0800) // ETH_P_IP
	ip := pkt[14:]
	ip[0] = 0x45 // version 4, 5 words of header
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)))
	ip[8], ip[9] = 64, 17 // TTL, UDP
	copy(ip[12:], []byte{10, 0, 0, 1, 10, 0, 0, 2})
	udp := ip[20:]
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], port)
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	return pkt
}

// CheckCost is `bpfsup check` of the verifier-heavy object beside a load of
// it: the check runs the verifier as a load does, and pins and attaches
// nothing.
type CheckCost struct {
	Check   []float64 `json:"check_ms"`
	Load    []float64 `json:"load_ms"`
	Install []float64 `json:"load_install_ms"`
	CheckS  Stats     `json:"check_stats_ms"`
	LoadS   Stats     `json:"load_stats_ms"`
}

// checkSection times `bpfsup check` (fork to exit) of the object with one
// verifier-heavy program, and `bpfsup run` loading it from nothing (fork
// to the child running), taking turns.
func (b *bench) checkSection() error {
	e := b.newBpfsupEnv("check")
	cfg := filepath.Join(b.work, "check.toml")
	if err := writeConfig(cfg, []cfgObject{{Path: b.objs["heavy"][1], Name: "heavy",
		Attach: []cfgAttach{{Program: "p0", Hook: "xdp:" + b.ifaces[0]}}}}); err != nil {
		return err
	}
	res := &CheckCost{}
	for r := 0; r < b.reps; r++ {
		if err := e.down(); err != nil {
			return err
		}
		c := e.cmd("check", "-c", cfg, "--netns", b.rns.path)
		t0 := mono()
		if _, err := runCmd(c); err != nil {
			return err
		}
		res.Check = append(res.Check, ms(mono()-t0))
		load, install, err := b.readyRun(e, cfg, "loaded", 1, 0)
		if err != nil {
			return err
		}
		res.Load, res.Install = append(res.Load, load), append(res.Install, install)
	}
	res.CheckS, res.LoadS = summarize(res.Check), summarize(res.Load)
	b.res.Check = res
	logf("check of the heavy object %.0f ms, load %.0f ms (install step %.0f ms)", res.CheckS.Median, res.LoadS.Median, summarize(res.Install).Median)
	return nil
}
