// Command bpfsupbench measures bpfsup against the alternatives (bpftool
// scripts, xdp-loader, a naive detach-and-attach, a bare fork+exec) and
// writes a report to bench/results: report.md, results.json and ready.svg.
// It is run by bench/run.sh (`make bench`), which installs the peers,
// builds this program and benchchild, and cleans up after a crash.
//
// It needs root, a kernel with BPF, bpffs and veth, and runs everything in
// network namespaces of its own ("bpfsupbench-<id>-<role>") with pins under
// /sys/fs/bpf/bpfsupbench-<id>: never on the host's interfaces. Every
// namespace, pin and process it makes is removed when it ends, also on
// SIGINT or SIGTERM.
//
// Sections (see report.md for what each measures and how):
//
//	ready      restart-to-ready: bpfsup adopt / load vs bpftool vs xdp-loader
//	upgrade    upgrade time and packets unfiltered during it
//	restart    child restart latency vs bare fork+exec
//	footprint  bpfsup's memory and CPU, idle and scraped
//	scale      100 objects x 10 maps: adopt and status time
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bpfsup/bpfsup/supervisor/spawn"

	"github.com/pelletier/go-toml/v2"
)

type bench struct {
	id, work, repo, out  string
	bpfsupBin, childBin  string
	goHelloBin           string // a Go program that does nothing; optional
	depsFloorBin         string // bench/cmd/depsfloor; optional
	pinFloorBin          string // bench/cmd/pinfloor; optional
	nativeHelper         string // bpfsup's native exec helper, as a file; "" where there is none
	pinBase              string
	reps, restarts, rate int
	keep                 bool
	counts               []int
	scaleCounts          []int
	ready                *readySock
	rns                  *netns   // namespace of the ready, restart, footprint and scale sections
	ifaces               []string // veth ends in rns: 100, or one per scaled object
	objs                 map[string]map[int]string
	scaleObj             string
	res                  *Results
}

func main() {
	b := &bench{}
	var sections string
	var quick, keep bool
	flag.StringVar(&b.id, "id", "", "run id: names of namespaces and pins (random when empty)")
	flag.StringVar(&b.work, "work", "", "work directory (a new temporary one when empty)")
	flag.StringVar(&b.out, "out", "bench/results", "where to write report.md, results.json, ready.svg")
	flag.StringVar(&b.bpfsupBin, "bpfsup", "bin/bpfsup", "bpfsup binary")
	flag.StringVar(&b.childBin, "child", "", "benchchild binary")
	flag.StringVar(&b.goHelloBin, "gohello", "", "a Go program that does nothing (bench/cmd/gohello): the start-up floor of Go")
	flag.StringVar(&b.depsFloorBin, "depsfloor", "", "bench/cmd/depsfloor: an empty main linking bpfsup's libraries, their start-up floor")
	flag.StringVar(&b.pinFloorBin, "pinfloor", "", "bench/cmd/pinfloor: the floor under adopt and status at scale")
	flag.IntVar(&b.reps, "reps", 5, "repetitions of each comparison")
	flag.IntVar(&b.restarts, "restarts", 1000, "child restarts measured")
	flag.IntVar(&b.rate, "rate", 20000, "UDP packets per second during the upgrade test")
	flag.StringVar(&sections, "sections", "ready,upgrade,restart,footprint,scale,stats,check", "sections to run")
	flag.BoolVar(&quick, "quick", false, "a short run for development: 3 repetitions, fewer programs and restarts")
	flag.DurationVar(&readyCaseBudget, "case-budget", readyCaseBudget, "restart-to-ready: after 3 repetitions and this long, only adopt repeats")
	flag.DurationVar(&settleMax, "settle", settleMax, "at most this long, wait for the CPU pressure to fall before measuring")
	flag.BoolVar(&keep, "keep", false, "keep the work directory (logs, configs, generated objects)")
	flag.Parse()
	b.keep = keep
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if quick {
		if !set["reps"] {
			b.reps = 3
		}
		if !set["restarts"] {
			b.restarts = 100
		}
		b.counts, b.scaleCounts = []int{1, 10}, []int{1, 10}
	} else {
		b.counts, b.scaleCounts = []int{1, 10, 100}, []int{1, 10, 100, 1000}
	}

	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigc
		fmt.Fprintf(os.Stderr, "bench: %v: cleaning up\n", s)
		cleanups.run()
		os.Exit(130)
	}()

	err := b.main(strings.Split(sections, ","))
	cleanups.run()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

func (b *bench) main(sections []string) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root")
	}
	var err error
	if b.repo, err = os.Getwd(); err != nil {
		return err
	}
	if b.id == "" {
		b.id = strconv.FormatInt(time.Now().UnixNano()%0xffffff, 16)
	}
	if b.work == "" {
		if b.work, err = os.MkdirTemp("", "bpfsupbench-"); err != nil {
			return err
		}
		if !b.keep {
			cleanups.add(func() { os.RemoveAll(b.work) })
		} else {
			logf("work directory %s is kept", b.work)
		}
	}
	if img := spawn.NativeHelperImage(); img != nil {
		b.nativeHelper = filepath.Join(b.work, "bpfsup-exec")
		if err := os.WriteFile(b.nativeHelper, img, 0o755); err != nil {
			return err
		}
	}
	for _, p := range []*string{&b.bpfsupBin, &b.childBin} {
		if *p == "" {
			return fmt.Errorf("-bpfsup and -child are required")
		}
		if *p, err = filepath.Abs(*p); err != nil {
			return err
		}
	}
	b.pinBase = "/sys/fs/bpf/bpfsupbench-" + b.id
	cleanups.add(func() { os.RemoveAll(b.pinBase) })
	if err := os.MkdirAll(b.pinBase, 0o700); err != nil {
		return fmt.Errorf("pin base: %w", err)
	}

	b.res = &Results{Started: time.Now().UTC(), Reps: b.reps}
	b.res.Env = collectEnv(b.bpfsupBin)
	logf("waiting for the CPU pressure (avg10) to fall under %.0f%%", settleThreshold)
	settled, waited := settle(settleMax)
	b.res.Env.Settled, b.res.Env.SettleWait = settled, waited.Seconds()
	b.res.Env.LoadAvgStart, b.res.Env.CPUPressureStart = loadAvg(), cpuPressure()
	logf("bench %s on %s, kernel %s; load average %s, CPU pressure %s (settled %v after %s)", b.id, b.res.Env.CPU, b.res.Env.Kernel,
		b.res.Env.LoadAvgStart, b.res.Env.CPUPressureStart, settled, waited.Round(time.Second))

	if b.ready, err = listenReady(b.work); err != nil {
		return err
	}
	if err := b.buildObjects(); err != nil {
		return err
	}
	if b.rns, err = newNetns(b.id, "ready"); err != nil {
		return err
	}
	// One interface end per scaled object (each runs its XDP program), at
	// least the 100 the ready section attaches to.
	pairs := 50
	for _, k := range b.scaleCounts {
		pairs = max(pairs, (k+1)/2)
	}
	if b.ifaces, err = b.rns.vethPairs("r", pairs); err != nil {
		return err
	}

	var failed []string
	for _, s := range sections {
		fn := map[string]func() error{
			"ready": b.readySection, "upgrade": b.upgradeSection, "restart": b.restartSection,
			"footprint": b.footprintSection, "scale": b.scaleSection, "stats": b.statsSection, "check": b.checkSection,
		}[s]
		if fn == nil {
			return fmt.Errorf("unknown section %q", s)
		}
		start := time.Now()
		logf("== %s", s)
		mark := cleanups.mark()
		err := fn()
		cleanups.runTo(mark)
		if err != nil {
			logf("%s FAILED: %v", s, err)
			b.res.Errors = append(b.res.Errors, fmt.Sprintf("%s: %v", s, err))
			failed = append(failed, s)
		}
		logf("== %s done in %s", s, time.Since(start).Round(time.Second))
	}

	b.res.Env.LoadAvgEnd, b.res.Env.CPUPressureEnd = loadAvg(), cpuPressure()
	b.res.Finished = time.Now().UTC()
	if err := b.writeResults(); err != nil {
		return err
	}
	logf("wrote %s", b.out)
	if len(failed) > 0 {
		return fmt.Errorf("sections failed: %s", strings.Join(failed, ", "))
	}
	return nil
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}

func (b *bench) buildObjects() error {
	dir := filepath.Join(b.work, "obj")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b.objs = map[string]map[int]string{"small": {}, "heavy": {}}
	for _, n := range b.counts {
		var err error
		if b.objs["small"][n], err = compile(b.repo, dir, fmt.Sprintf("small%d", n), counterSource(n)); err != nil {
			return err
		}
		if b.objs["heavy"][n], err = compile(b.repo, dir, fmt.Sprintf("heavy%d", n), heavySource(n)); err != nil {
			return err
		}
	}
	var err error
	if b.scaleObj, err = compile(b.repo, dir, "scale10maps", scaleSource()); err != nil {
		return err
	}
	insns, err := verifierInsns(b.objs["heavy"][1], "p0")
	if err != nil {
		return err
	}
	b.res.HeavyInsns = insns
	logf("objects built; the heavy program takes the verifier %d instructions", insns)
	return nil
}

// bpfsupEnv is a private pin root and state directory for bpfsup.
type bpfsupEnv struct {
	b                 *bench
	name              string
	pinRoot, stateDir string
}

func (b *bench) newBpfsupEnv(name string) *bpfsupEnv {
	e := &bpfsupEnv{b: b, name: name, pinRoot: filepath.Join(b.pinBase, name), stateDir: filepath.Join(b.work, "state-"+name)}
	cleanups.add(func() {
		// Unpinning the links detaches their programs.
		_, _ = run(b.bpfsupBin, "down", "--pin-root", e.pinRoot, "--state-dir", e.stateDir)
		os.RemoveAll(e.pinRoot)
	})
	return e
}

// cmd is a bpfsup command line with this environment's pin root and state dir.
func (e *bpfsupEnv) cmd(sub string, args ...string) *exec.Cmd {
	a := append([]string{sub, "--pin-root", e.pinRoot, "--state-dir", e.stateDir}, args...)
	c := exec.Command(e.b.bpfsupBin, a...)
	c.Env = append(os.Environ(), "BENCH_SOCK="+e.b.ready.path)
	return c
}

// down removes everything bpfsup installed in this environment.
func (e *bpfsupEnv) down() error {
	c := e.cmd("down")
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := c.CombinedOutput()
	if err != nil {
		return fmt.Errorf("bpfsup down: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

var installedRE = regexp.MustCompile(`msg="objects installed" objects=\d+ adopted=(\d+) loaded=(\d+) took=(\S+)`)

// installed reads the "objects installed" line of a bpfsup log: how many
// programs were adopted from their pins and how many loaded, and how long
// the install step took, in ms.
func installed(log string) (adopted, loaded int, took float64, err error) {
	b, _ := os.ReadFile(log)
	m := installedRE.FindStringSubmatch(string(b))
	if m == nil {
		return 0, 0, 0, fmt.Errorf("no \"objects installed\" line in %s", log)
	}
	adopted, _ = strconv.Atoi(m[1])
	loaded, _ = strconv.Atoi(m[2])
	d, err := time.ParseDuration(m[3])
	if err != nil {
		return 0, 0, 0, fmt.Errorf("%s: took=%s: %w", log, m[3], err)
	}
	return adopted, loaded, ms(d.Nanoseconds()), nil
}

// readyRun starts `bpfsup run` with a child that reports its start and
// exits, and returns the time from just before the fork of bpfsup to the
// child running with its fds, and the install step's time as bpfsup logs
// it. It checks that bpfsup adopted or loaded the programs as wanted (want
// is "adopted" or "loaded") and handed nfds fds.
func (b *bench) readyRun(e *bpfsupEnv, cfg, want string, progs, nfds int) (float64, float64, error) {
	c := e.cmd("run", "-c", cfg, "--netns", b.rns.path, "--restart", "never", "--", b.childBin, "exit")
	log := filepath.Join(b.work, "bpfsup-"+e.name+".log")
	d, err := b.timeToChild("bpfsup run", c, log, nfds)
	if err != nil {
		return 0, 0, err
	}
	adopted, loaded, took, err := installed(log)
	if err != nil {
		return 0, 0, err
	}
	switch {
	case want == "adopted" && (adopted != progs || loaded != 0),
		want == "loaded" && (loaded != progs || adopted != 0):
		return 0, 0, fmt.Errorf("bpfsup adopted %d and loaded %d programs, want %d %s", adopted, loaded, progs, want)
	}
	return d, took, nil
}

// timeToChild runs c, whose child is benchchild and reports its start, to
// its end: the ms from the fork of c to the child running with nfds fds.
func (b *bench) timeToChild(name string, c *exec.Cmd, log string, nfds int) (float64, error) {
	b.ready.drain()
	t0 := mono()
	p, err := startProc(name, c, log)
	if err != nil {
		return 0, err
	}
	ev, err := b.ready.waitStart(p, readyTimeout)
	if err != nil {
		p.stop(5 * time.Second)
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	if err := p.wait(time.Minute); err != nil {
		return 0, err
	}
	if ev.nfds != nfds {
		return 0, fmt.Errorf("%s: the child got %d fds, want %d", name, ev.nfds, nfds)
	}
	return ms(ev.ts - t0), nil
}

// Config files for bpfsup, written as TOML.
type cfgFile struct {
	Objects []cfgObject `toml:"object"`
}
type cfgObject struct {
	Path   string            `toml:"path"`
	Name   string            `toml:"name"`
	Attach []cfgAttach       `toml:"attach"`
	Maps   map[string]cfgMap `toml:"maps,omitempty"`
}
type cfgMap struct {
	Access string `toml:"access"`
}
type cfgAttach struct {
	Program string `toml:"program"`
	Hook    string `toml:"hook"`
}

func writeConfig(path string, objs []cfgObject) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := toml.NewEncoder(f).Encode(cfgFile{Objects: objs}); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// nsenter runs a command in the network namespace only: unlike
// `ip netns exec`, it keeps the host's mount namespace and so its bpffs.
func nsenter(ns *netns, args ...string) *exec.Cmd {
	c := exec.Command("nsenter", append([]string{"--net=" + ns.path}, args...)...)
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return c
}

func runCmd(c *exec.Cmd) (string, error) {
	out, err := c.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(c.Args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// startChild starts benchchild the way a script would after its loader
// returned, and waits for its start report.
func (b *bench) startChild(mode string) (readyEvent, error) {
	c := exec.Command(b.childBin, mode)
	c.Env = append(os.Environ(), "BENCH_SOCK="+b.ready.path)
	b.ready.drain()
	p, err := startProc("benchchild", c, "")
	if err != nil {
		return readyEvent{}, err
	}
	ev, err := b.ready.waitStart(p, time.Minute)
	if err != nil {
		return ev, err
	}
	return ev, p.wait(time.Minute)
}

// throughHelper is argv run through the exec helper bpfsup starts its child
// with by default: the native one where bpfsup has it, else the shell.
func (b *bench) throughHelper(argv ...string) []string {
	if b.nativeHelper != "" {
		return append([]string{b.nativeHelper}, argv...)
	}
	return throughShell(argv...)
}

// throughShell is argv run through the shell helper.
func throughShell(argv ...string) []string {
	return append([]string{spawn.ShellHelper, "-c", spawn.ShellScript, "bpfsup exec"}, argv...)
}
