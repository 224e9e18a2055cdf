package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/bpfsup/bpfsup/supervisor/spawn"
)

// Restart-to-ready. "Ready" is: every program attached and the application
// running. The application is benchchild, which reports CLOCK_MONOTONIC as
// soon as its main runs; the time is from just before the fork of the first
// command to that report. The peers have no application of their own, so
// their script starts the same child once the loader has returned: the
// child's own start-up is in every figure. bpfsup starts it through its exec
// helper (/bin/sh, which sets LISTEN_PID and execs it), and that is in
// bpfsup's figures.
//
//	bpfsup-adopt  bpfsup run with every pin in place (a restart of bpfsup)
//	bpfsup-load   bpfsup run with nothing pinned (first start, or a loader
//	              that does not pin: the verifier runs for every program)
//	bpftool       `bpftool prog loadall`, then one `bpftool batch` process
//	              with a `net attach xdp` per interface (bpftool's best case)
//	xdp-loader    one `xdp-loader load -n PROG IFACE OBJ` per interface, from
//	              one shell; libxdp falls back to a single program without
//	              its dispatcher, since this kernel refuses freplace
//
// Every method attaches in native XDP mode (veth has it), program pI to
// interface rI, and is checked afterwards through netlink. The methods take
// turns inside each repetition so that a change of the machine's load
// touches all of them alike.

// ReadyRow is one method at one program count.
type ReadyRow struct {
	Kind     string    `json:"kind"` // small or heavy
	Programs int       `json:"programs"`
	Method   string    `json:"method"`
	Samples  []float64 `json:"samples_ms"`
	Stats    Stats     `json:"stats_ms"`
	// Install is bpfsup's own install step in each of its runs (its log's
	// "objects installed" took=): from the configuration read to every
	// hook converged, without the process's and the child's start-up.
	Install      []float64 `json:"install_ms,omitempty"`
	InstallStats *Stats    `json:"install_stats_ms,omitempty"`
}

var readyMethods = []string{"bpfsup-adopt", "bpfsup-load", "bpftool", "xdp-loader"}

// StartupRow is the time one command takes from fork to exit: the floor
// under every figure of its tool.
type StartupRow struct {
	Command string    `json:"command"`
	Samples []float64 `json:"samples_ms"`
	Stats   Stats     `json:"stats_ms"`
}

// startupFloors times commands that do nothing but start and exit.
func (b *bench) startupFloors() error {
	type floor struct {
		label string
		argv  []string
	}
	floors := []floor{
		{startupBpfsup, []string{b.bpfsupBin, "version"}},
		{"bpftool version", []string{"bpftool", "version"}},
		{"xdp-loader help", []string{"xdp-loader", "help"}},
		{"benchchild exit", []string{b.childBin, "exit"}},
		// How bpfsup starts its child: through its exec helper.
		{startupHelper, []string{spawn.ShellHelper, "-c", spawn.ShellScript, "bpfsup exec", b.childBin, "exit"}},
	}
	if b.goHelloBin != "" {
		floors = append(floors, floor{startupGo, []string{b.goHelloBin}})
	}
	rows := make([]StartupRow, len(floors))
	for r := 0; r < 11; r++ {
		for i, f := range floors {
			cmd := exec.Command(f.argv[0], f.argv[1:]...)
			cmd.Env = append(os.Environ(), "BENCH_SOCK="+b.ready.path)
			cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			t0 := mono()
			// xdp-loader help exits 1 after printing its usage.
			if out, err := cmd.CombinedOutput(); err != nil && f.argv[0] != "xdp-loader" {
				return fmt.Errorf("%s: %w: %s", f.label, err, out)
			}
			rows[i].Samples = append(rows[i].Samples, ms(mono()-t0))
		}
	}
	for i, f := range floors {
		rows[i].Command = f.label
		rows[i].Stats = summarize(rows[i].Samples)
		logf("start-up %-30s median %.2f ms", f.label, rows[i].Stats.Median)
	}
	b.res.Startup = rows
	return nil
}

// Labels of the start-up rows the targets read.
const (
	startupBpfsup = "bpfsup version"
	startupHelper = "sh -c 'exec benchchild' exit"
	startupGo     = "gohello (a Go program that does nothing)"
)

func (b *bench) startupRow(label string) *StartupRow {
	for i := range b.res.Startup {
		if b.res.Startup[i].Command == label {
			return &b.res.Startup[i]
		}
	}
	return nil
}

func (b *bench) readySection() error {
	if err := b.startupFloors(); err != nil {
		return err
	}
	for _, kind := range []string{"small", "heavy"} {
		for _, n := range b.counts {
			if err := b.readyCase(kind, n); err != nil {
				return fmt.Errorf("%s x%d: %w", kind, n, err)
			}
		}
	}
	return nil
}

func (b *bench) readyCase(kind string, n int) error {
	obj := b.objs[kind][n]
	ifaces := b.ifaces[:n]
	progs := make([]string, n)
	for i := range progs {
		progs[i] = fmt.Sprintf("p%d", i)
	}
	nfds := 0
	if kind == "small" {
		nfds = 1 // the counters map
	}
	name := fmt.Sprintf("ready-%s%d", kind, n)
	e := b.newBpfsupEnv(name)

	o := cfgObject{Path: obj, Name: "ready"}
	for i := range ifaces {
		o.Attach = append(o.Attach, cfgAttach{Program: progs[i], Hook: "xdp:" + ifaces[i]})
	}
	cfg := filepath.Join(b.work, name+".toml")
	if err := writeConfig(cfg, []cfgObject{o}); err != nil {
		return err
	}

	pinDir := filepath.Join(b.pinBase, name+"-bpftool")
	// prog loadall runs as its own process: in a batch, bpftool 7.1 fails
	// the batch on a stale errno (EEXIST) that loadall of several programs
	// leaves behind.
	var batch, xdpLoader, detach []string
	for i := range ifaces {
		batch = append(batch, fmt.Sprintf("net attach xdp pinned %s/%s dev %s", pinDir, progs[i], ifaces[i]))
		xdpLoader = append(xdpLoader, fmt.Sprintf("xdp-loader load -m native -n %s %s %s", progs[i], ifaces[i], obj))
		detach = append(detach, "link set dev "+ifaces[i]+" xdp off")
	}
	batchFile := filepath.Join(b.work, name+".bpftool")
	if err := os.WriteFile(batchFile, []byte(strings.Join(batch, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	script := "set -e\n" + strings.Join(xdpLoader, "\n") + "\n"
	cleanups.add(func() {
		_ = b.rns.ipBatch(detach)
		os.RemoveAll(pinDir)
	})
	// Detaching a netlink-attached program and unpinning bpftool's programs
	// puts the interfaces back as they were, untimed.
	resetNetlink := func() error {
		if err := b.rns.ipBatch(detach); err != nil {
			return err
		}
		if err := os.RemoveAll(pinDir); err != nil {
			return err
		}
		return b.rns.checkDetached()
	}

	samples := map[string][]float64{}
	installs := map[string][]float64{}
	start := time.Now()
	adoptOnly := false
	for r := 0; r < b.reps; r++ {
		if !adoptOnly && r >= minReps && time.Since(start) > readyCaseBudget {
			// Adopting is quick and repeatable with the pins of the last
			// load: it keeps all its repetitions.
			adoptOnly = true
			note := fmt.Sprintf("restart-to-ready, %s program x%d: %d repetitions of load, bpftool and xdp-loader instead of %d, to keep within the time budget (%s per case)",
				kindName(kind), n, r, b.reps, readyCaseBudget)
			logf("%s", note)
			b.res.Notes = append(b.res.Notes, note)
		}
		if adoptOnly {
			d, inst, err := b.readyRun(e, cfg, "adopted", n, nfds)
			if err != nil {
				return fmt.Errorf("bpfsup-adopt: %w", err)
			}
			if err := b.rns.checkAttached(ifaces, progs); err != nil {
				return fmt.Errorf("bpfsup-adopt: %w", err)
			}
			samples["bpfsup-adopt"] = append(samples["bpfsup-adopt"], d)
			installs["bpfsup-adopt"] = append(installs["bpfsup-adopt"], inst)
			continue
		}
		if err := e.down(); err != nil {
			return err
		}
		if err := b.rns.checkDetached(); err != nil {
			return fmt.Errorf("after bpfsup down: %w", err)
		}

		// bpftool: load everything, attach everything, start the child.
		t0 := mono()
		if _, err := runCmd(nsenter(b.rns, "bpftool", "prog", "loadall", obj, pinDir, "type", "xdp")); err != nil {
			return err
		}
		if _, err := runCmd(nsenter(b.rns, "bpftool", "batch", "file", batchFile)); err != nil {
			return err
		}
		ev, err := b.startChild("exit")
		if err != nil {
			return fmt.Errorf("bpftool: %w", err)
		}
		samples["bpftool"] = append(samples["bpftool"], ms(ev.ts-t0))
		if err := b.rns.checkAttached(ifaces, progs); err != nil {
			return fmt.Errorf("bpftool: %w", err)
		}
		if err := resetNetlink(); err != nil {
			return err
		}

		// xdp-loader, one interface at a time.
		t0 = mono()
		if _, err := runCmd(nsenter(b.rns, "sh", "-c", script)); err != nil {
			return err
		}
		if ev, err = b.startChild("exit"); err != nil {
			return fmt.Errorf("xdp-loader: %w", err)
		}
		samples["xdp-loader"] = append(samples["xdp-loader"], ms(ev.ts-t0))
		if err := b.rns.checkAttached(ifaces, progs); err != nil {
			return fmt.Errorf("xdp-loader: %w", err)
		}
		if err := resetNetlink(); err != nil {
			return err
		}

		// bpfsup from nothing, then bpfsup again with the pins it left,
		// which stay for the next repetition's adopt-only runs.
		for _, m := range []struct{ method, want string }{{"bpfsup-load", "loaded"}, {"bpfsup-adopt", "adopted"}} {
			d, inst, err := b.readyRun(e, cfg, m.want, n, nfds)
			if err != nil {
				return fmt.Errorf("%s: %w", m.method, err)
			}
			if err := b.rns.checkAttached(ifaces, progs); err != nil {
				return fmt.Errorf("%s: %w", m.method, err)
			}
			samples[m.method] = append(samples[m.method], d)
			installs[m.method] = append(installs[m.method], inst)
		}
	}
	if err := e.down(); err != nil {
		return err
	}
	for _, m := range readyMethods {
		row := ReadyRow{Kind: kind, Programs: n, Method: m, Samples: samples[m], Stats: summarize(samples[m])}
		if in := installs[m]; len(in) > 0 {
			st := summarize(in)
			row.Install, row.InstallStats = in, &st
		}
		b.res.Ready = append(b.res.Ready, row)
		logf("ready %s x%d %-13s median %9.2f ms  [%.2f .. %.2f]", kind, n, m, row.Stats.Median, row.Stats.Min, row.Stats.Max)
	}
	return nil
}

const (
	// readyTimeout bounds one restart-to-ready run: 100 verifier-heavy
	// programs take seconds to load, more on a loaded machine.
	readyTimeout = 3 * time.Minute
	// minReps: the repetitions every method gets, whatever the budget.
	minReps = 3
)

// readyCaseBudget: once a case has run minReps repetitions and this long,
// only adopting goes on, so that a loaded machine does not stretch `make
// bench` to an hour (100 verifier-heavy programs take ~20 s per repetition
// on an idle machine, ten times that under heavy load). -case-budget.
var readyCaseBudget = 90 * time.Second
