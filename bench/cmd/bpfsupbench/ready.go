package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Restart-to-ready. "Ready" is: every program attached and the application
// running. The application is benchchild, which reports CLOCK_MONOTONIC as
// soon as its main runs; the time is from just before the fork of the first
// command to that report. The peers have no application of their own, so
// their script starts the same child once the loader has returned: the
// child's own start-up is in every figure. bpfsup starts it through its exec
// helper (the native one, or /bin/sh; it sets LISTEN_PID and execs it), and
// that is in bpfsup's figures.
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
		{startupHelper, b.throughHelper(b.childBin, "exit")},
	}
	if b.nativeHelper != "" {
		floors = append(floors, floor{startupShell, throughShell(b.childBin, "exit")})
	}
	if b.goHelloBin != "" {
		floors = append(floors, floor{startupGo, []string{b.goHelloBin}})
	}
	if b.depsFloorBin != "" {
		floors = append(floors, floor{startupDeps, []string{b.depsFloorBin}})
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
	startupHelper = "bpfsup's exec helper, then benchchild exit"
	startupShell  = "sh -c 'exec benchchild' exit"
	startupGo     = "gohello (a Go program that does nothing)"
	startupDeps   = "depsfloor (an empty main linking bpfsup's libraries)"
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

// readyCase is one case of the restart-to-ready section: n programs of one
// kind, each on its interface, started by every method in turn.
type readyCase struct {
	b      *bench
	obj    string
	ifaces []string
	progs  []string
	nfds   int // fds handed to the child
	e      *bpfsupEnv
	cfg    string
	// pinDir, batchFile and script are bpftool's pins and batch and
	// xdp-loader's script; detach puts the interfaces back.
	pinDir, batchFile, script string
	detach                    []string

	samples, installs map[string][]float64
}

func (b *bench) newReadyCase(kind string, n int) (*readyCase, error) {
	name := fmt.Sprintf("ready-%s%d", kind, n)
	rc := &readyCase{
		b:         b,
		obj:       b.objs[kind][n],
		ifaces:    b.ifaces[:n],
		progs:     make([]string, n),
		e:         b.newBpfsupEnv(name),
		cfg:       filepath.Join(b.work, name+".toml"),
		pinDir:    filepath.Join(b.pinBase, name+"-bpftool"),
		batchFile: filepath.Join(b.work, name+".bpftool"),
		samples:   map[string][]float64{},
		installs:  map[string][]float64{},
	}
	for i := range rc.progs {
		rc.progs[i] = fmt.Sprintf("p%d", i)
	}
	if kind == "small" {
		rc.nfds = 1 // the counters map
	}
	o := cfgObject{Path: rc.obj, Name: "ready"}
	for i := range rc.ifaces {
		o.Attach = append(o.Attach, cfgAttach{Program: rc.progs[i], Hook: "xdp:" + rc.ifaces[i]})
	}
	if err := writeConfig(rc.cfg, []cfgObject{o}); err != nil {
		return nil, err
	}
	// prog loadall runs as its own process: in a batch, bpftool 7.1 fails
	// the batch on a stale errno (EEXIST) that loadall of several programs
	// leaves behind.
	var batch, xdpLoader []string
	for i := range rc.ifaces {
		batch = append(batch, fmt.Sprintf("net attach xdp pinned %s/%s dev %s", rc.pinDir, rc.progs[i], rc.ifaces[i]))
		xdpLoader = append(xdpLoader, fmt.Sprintf("xdp-loader load -m native -n %s %s %s", rc.progs[i], rc.ifaces[i], rc.obj))
		rc.detach = append(rc.detach, "link set dev "+rc.ifaces[i]+" xdp off")
	}
	if err := os.WriteFile(rc.batchFile, []byte(strings.Join(batch, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	rc.script = "set -e\n" + strings.Join(xdpLoader, "\n") + "\n"
	cleanups.add(func() {
		_ = b.rns.ipBatch(rc.detach)
		os.RemoveAll(rc.pinDir)
	})
	return rc, nil
}

// oneProgramRepsFactor multiplies the repetitions of the one-program cases.
const oneProgramRepsFactor = 3

func (b *bench) readyCase(kind string, n int) error {
	rc, err := b.newReadyCase(kind, n)
	if err != nil {
		return err
	}
	start := time.Now()
	adoptOnly := false
	// The one-program cases are the ratio targets' and take a tenth of a
	// second a repetition: three times the repetitions, for medians that
	// the machine's noise moves less.
	reps := b.reps
	if n == 1 {
		reps = oneProgramRepsFactor * b.reps
	}
	for r := 0; r < reps; r++ {
		if !adoptOnly && r >= minReps && time.Since(start) > readyCaseBudget {
			// Adopting is quick and repeatable with the pins of the last
			// load: it keeps all its repetitions.
			adoptOnly = true
			note := fmt.Sprintf("restart-to-ready, %s program x%d: %d repetitions of load, bpftool and xdp-loader instead of %d, to keep within the time budget (%s per case)",
				kindName(kind), n, r, reps, readyCaseBudget)
			logf("%s", note)
			b.res.Notes = append(b.res.Notes, note)
		}
		if adoptOnly {
			if err := rc.bpfsup("bpfsup-adopt", "adopted"); err != nil {
				return err
			}
			continue
		}
		if err := rc.e.down(); err != nil {
			return err
		}
		if err := b.rns.checkDetached(); err != nil {
			return fmt.Errorf("after bpfsup down: %w", err)
		}
		if err := rc.others(); err != nil {
			return err
		}
		// bpfsup from nothing, then bpfsup again with the pins it left,
		// which stay for the next repetition's adopt-only runs.
		if err := rc.bpfsup("bpfsup-load", "loaded"); err != nil {
			return err
		}
		if err := rc.bpfsup("bpfsup-adopt", "adopted"); err != nil {
			return err
		}
	}
	if err := rc.e.down(); err != nil {
		return err
	}
	for _, m := range readyMethods {
		row := ReadyRow{Kind: kind, Programs: n, Method: m, Samples: rc.samples[m], Stats: summarize(rc.samples[m])}
		if in := rc.installs[m]; len(in) > 0 {
			st := summarize(in)
			row.Install, row.InstallStats = in, &st
		}
		b.res.Ready = append(b.res.Ready, row)
		logf("ready %s x%d %-13s median %9.2f ms  [%.2f .. %.2f]", kind, n, m, row.Stats.Median, row.Stats.Min, row.Stats.Max)
	}
	return nil
}

// bpfsup runs bpfsup to ready once, expecting the objects to be want
// ("loaded" or "adopted"), and records the sample as method.
func (rc *readyCase) bpfsup(method, want string) error {
	d, inst, err := rc.b.readyRun(rc.e, rc.cfg, want, len(rc.progs), rc.nfds)
	if err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	if err := rc.b.rns.checkAttached(rc.ifaces, rc.progs); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	rc.samples[method] = append(rc.samples[method], d)
	rc.installs[method] = append(rc.installs[method], inst)
	return nil
}

// others runs bpftool (load everything, attach everything, start the
// child) and then xdp-loader (one interface at a time), each timed to the
// child's start, and detaches after each, untimed.
func (rc *readyCase) others() error {
	b := rc.b
	t0 := mono()
	if _, err := runCmd(nsenter(b.rns, "bpftool", "prog", "loadall", rc.obj, rc.pinDir, "type", "xdp")); err != nil {
		return err
	}
	if _, err := runCmd(nsenter(b.rns, "bpftool", "batch", "file", rc.batchFile)); err != nil {
		return err
	}
	if err := rc.childStarted("bpftool", t0); err != nil {
		return err
	}
	t0 = mono()
	if _, err := runCmd(nsenter(b.rns, "sh", "-c", rc.script)); err != nil {
		return err
	}
	return rc.childStarted("xdp-loader", t0)
}

// childStarted starts the child after method attached everything at t0,
// records the time to the child's start, checks the attachments and puts
// the interfaces back as they were.
func (rc *readyCase) childStarted(method string, t0 int64) error {
	b := rc.b
	ev, err := b.startChild("exit")
	if err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	rc.samples[method] = append(rc.samples[method], ms(ev.ts-t0))
	if err := b.rns.checkAttached(rc.ifaces, rc.progs); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	// Detaching a netlink-attached program and unpinning bpftool's
	// programs puts the interfaces back as they were.
	if err := b.rns.ipBatch(rc.detach); err != nil {
		return err
	}
	if err := os.RemoveAll(rc.pinDir); err != nil {
		return err
	}
	return b.rns.checkDetached()
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
