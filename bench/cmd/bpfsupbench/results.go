package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Results is everything measured, as written to results.json.
type Results struct {
	Started    time.Time    `json:"started"`
	Finished   time.Time    `json:"finished"`
	Env        Env          `json:"env"`
	Reps       int          `json:"repetitions"`
	HeavyInsns int          `json:"heavy_verifier_insns_processed"`
	Startup    []StartupRow `json:"startup"`
	Ready      []ReadyRow   `json:"ready"`
	Upgrade    []UpgradeRow `json:"upgrade"`
	// UpgradeSent is the datagrams sent during the whole upgrade section.
	UpgradeSent int64          `json:"upgrade_datagrams_sent"`
	Restart     *RestartResult `json:"restart"`
	Footprint   []FootprintRun `json:"footprint"`
	Scale       []ScaleRow     `json:"scale"`
	// ProgramStats is what --program-stats costs per packet.
	ProgramStats *StatsCost `json:"program_stats,omitempty"`
	// Check is bpfsup check of the verifier-heavy object beside its load.
	Check   *CheckCost `json:"check,omitempty"`
	Targets []Target   `json:"targets"`
	Errors  []string   `json:"errors,omitempty"`
	Notes   []string   `json:"notes,omitempty"`
}

// Env is the machine and the versions the run used.
type Env struct {
	Kernel       string `json:"kernel"`
	CPU          string `json:"cpu"`
	Cores        int    `json:"cores"`
	Bpfsup       string `json:"bpfsup"`
	Bpftool      string `json:"bpftool"`
	XdpTools     string `json:"xdp_tools"`
	Go           string `json:"go"`
	Clang        string `json:"clang"`
	Iproute2     string `json:"iproute2"`
	LoadAvgStart string `json:"loadavg_start"`
	LoadAvgEnd   string `json:"loadavg_end"`
	// CPU pressure (/proc/pressure/cpu "some" avg10 avg60 avg300): the
	// share of time runnable tasks waited for a CPU.
	CPUPressureStart string `json:"cpu_pressure_start"`
	CPUPressureEnd   string `json:"cpu_pressure_end"`
	// Settled says whether other work had let go of the CPUs when the
	// run began (see settle); SettleWait is how long that took.
	Settled    bool    `json:"settled"`
	SettleWait float64 `json:"settle_wait_s"`
}

// Target is one target of the issue and whether this run met it.
type Target struct {
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Met      bool   `json:"met"`
	// Unmeasured: the section that measures it failed or was not run.
	Unmeasured bool `json:"unmeasured,omitempty"`
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

func output(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return "unknown (" + name + ": " + err.Error() + ")"
	}
	return strings.TrimSpace(string(out))
}

func collectEnv(bpfsupBin string) Env {
	var u unix.Utsname
	_ = unix.Uname(&u)
	e := Env{
		Kernel: unix.ByteSliceToString(u.Release[:]) + " " + unix.ByteSliceToString(u.Machine[:]),
		Cores:  runtime.NumCPU(),
		Go:     runtime.Version(),
		CPU:    "unknown",
	}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		s := bufio.NewScanner(f)
		for s.Scan() {
			if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				e.CPU = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	e.Bpfsup = firstLine(output(bpfsupBin, "version"))
	bv := output("bpftool", "version")
	e.Bpftool = firstLine(bv)
	if lines := strings.Split(bv, "\n"); len(lines) > 1 {
		e.Bpftool = strings.TrimSpace(lines[0]) + " (" + strings.TrimSpace(lines[1]) + ")"
	}
	e.Bpftool += ", Debian " + output("dpkg-query", "-W", "-f", "${Version}", "bpftool")
	e.XdpTools = "xdp-tools " + output("dpkg-query", "-W", "-f", "${Version}", "xdp-tools") +
		", libxdp " + output("dpkg-query", "-W", "-f", "${Version}", "libxdp1")
	e.Clang = firstLine(output("clang", "--version"))
	e.Iproute2 = firstLine(output("ip", "-V"))
	return e
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// loaded says whether other work held the CPUs when the run began: the
// settle step gave up waiting. The figures at the end are the benchmark's
// own work as much as anything else's, and the load average decays too
// slowly (a build just before the run keeps it up for minutes) to say.
func (e Env) loaded() bool {
	return !e.Settled
}

// settleMax bounds the wait for an idle machine (-settle).
var settleMax = time.Minute

// settleThreshold: CPU pressure (avg10, % of time a task waited for a CPU)
// under which the machine counts as idle enough to measure.
const settleThreshold = 2.0

// settle waits, up to max, until the CPU pressure of the last ten seconds
// falls under settleThreshold, so that the work just before the run (the
// build) does not leak into its first figures. It says whether it got there
// and how long it waited.
func settle(max time.Duration) (bool, time.Duration) {
	start := time.Now()
	for {
		var a10 float64
		if _, err := fmt.Sscan(cpuPressure(), &a10); err != nil {
			return true, 0 // no PSI on this kernel: nothing to wait for
		}
		if a10 < settleThreshold {
			return true, time.Since(start)
		}
		if time.Since(start) >= max {
			return false, time.Since(start)
		}
		time.Sleep(time.Second)
	}
}

// cpuPressure is "avg10 avg60 avg300" of /proc/pressure/cpu's "some" line.
func cpuPressure() string {
	b, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || f[0] != "some" {
			continue
		}
		var v []string
		for _, kv := range f[1:4] {
			_, x, _ := strings.Cut(kv, "=")
			v = append(v, x)
		}
		return strings.Join(v, " ")
	}
	return "unknown"
}

func (b *bench) writeResults() error {
	b.res.Targets = b.targets()
	if err := os.MkdirAll(b.out, 0o755); err != nil {
		return err
	}
	j, err := json.MarshalIndent(b.res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(b.out, "results.json"), append(j, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(b.out, "ready.svg"), []byte(readyChart(b.res.Ready)), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(b.out, "report.md"), []byte(b.report()), 0o644)
}

func (b *bench) readyRow(kind string, n int, method string) *ReadyRow {
	for i := range b.res.Ready {
		r := &b.res.Ready[i]
		if r.Kind == kind && r.Programs == n && r.Method == method {
			return r
		}
	}
	return nil
}

func (b *bench) targets() []Target {
	var t []Target
	notMeasured := func(name string) Target {
		return Target{Target: name, Measured: "not measured (section failed or skipped)"}
	}

	name := "Adopt at least 10x faster than load, verifier-heavy program"
	var parts []string
	met, any := true, false
	for _, n := range b.counts {
		a, l := b.readyRow("heavy", n, "bpfsup-adopt"), b.readyRow("heavy", n, "bpfsup-load")
		if a == nil || l == nil {
			continue
		}
		any = true
		r := ratio(l.Stats.Median, a.Stats.Median)
		parts = append(parts, fmt.Sprintf("%d prog: %.0fx (%s vs %s ms)", n, r, fmtMs(l.Stats.Median), fmtMs(a.Stats.Median)))
		met = met && r >= 10
	}
	if any && !met {
		if bound := b.goBound(); bound != "" {
			parts = append(parts, bound)
		}
		a, l := b.readyRow("heavy", 1, "bpfsup-adopt"), b.readyRow("heavy", 1, "bpfsup-load")
		if a != nil && l != nil && a.InstallStats != nil && l.InstallStats != nil {
			parts = append(parts, fmt.Sprintf("bpfsup's install step alone at 1 prog: %.0fx (%s vs %s ms)",
				ratio(l.InstallStats.Median, a.InstallStats.Median), fmtMs(l.InstallStats.Median), fmtMs(a.InstallStats.Median)))
		}
	}
	if any {
		t = append(t, Target{Target: name, Measured: strings.Join(parts, "; "), Met: met})
	} else {
		t = append(t, notMeasured(name))
	}

	name = "Adopt under 50 ms for 100 programs"
	parts, met, any = nil, true, false
	for _, kind := range []string{"small", "heavy"} {
		a := b.readyRow(kind, 100, "bpfsup-adopt")
		if a == nil {
			continue
		}
		any = true
		parts = append(parts, fmt.Sprintf("%s: median %s ms, max %s ms", kindName(kind), fmtMs(a.Stats.Median), fmtMs(a.Stats.Max)))
		met = met && a.Stats.Median < 50
	}
	if any {
		t = append(t, Target{Target: name, Measured: strings.Join(parts, "; "), Met: met})
	} else {
		t = append(t, notMeasured(name))
	}

	name = "Zero packets unfiltered during a bpfsup upgrade, where the naive way shows some"
	var sup, naive *UpgradeRow
	for i := range b.res.Upgrade {
		switch r := &b.res.Upgrade[i]; {
		case strings.HasPrefix(r.Method, "bpfsup"):
			sup = r
		case strings.HasPrefix(r.Method, "naive"):
			naive = r
		}
	}
	if sup != nil && naive != nil {
		s, n := sum(sup.Unfiltered), sum(naive.Unfiltered)
		t = append(t, Target{Target: name, Met: s == 0 && n > 0,
			Measured: fmt.Sprintf("bpfsup %d in %d upgrades; naive %d in %d upgrades", s, len(sup.Unfiltered), n, len(naive.Unfiltered))})
	} else {
		t = append(t, notMeasured(name))
	}

	name = "Child restart median under 5 ms above the bare fork+exec floor"
	if r := b.res.Restart; r != nil {
		d := r.BpfsupS.Median - r.ForkExecS.Median
		t = append(t, Target{Target: name, Met: d < 5,
			Measured: fmt.Sprintf("%s ms above (bpfsup %s ms, fork+exec %s ms, %d restarts)", fmtMs(d), fmtMs(r.BpfsupS.Median), fmtMs(r.ForkExecS.Median), r.Restarts)})
	} else {
		t = append(t, notMeasured(name))
	}

	var idle, adopted, floor *FootprintRun
	for i := range b.res.Footprint {
		switch b.res.Footprint[i].Name {
		case footprintIdle:
			idle = &b.res.Footprint[i]
		case footprintAdopted:
			adopted = &b.res.Footprint[i]
		case footprintFloor:
			floor = &b.res.Footprint[i]
		}
	}
	name = "bpfsup idle under 10 MiB resident with 10 objects"
	if idle != nil {
		m := fmt.Sprintf("%.1f MiB after loading (max of %d samples; peak VmHWM %.1f MiB): %.1f MiB anonymous, %.1f MiB the binary's own pages mapped in, of its %.1f MiB of code and read-only data",
			idle.RSS.Max, idle.RSS.N, idle.HWMMiB, idle.AnonMiB, idle.FileMiB, idle.CodeMiB)
		if adopted != nil {
			m += fmt.Sprintf("; %.1f MiB after a restart that adopted (%.1f anonymous, %.1f file)", adopted.RSS.Max, adopted.AnonMiB, adopted.FileMiB)
		}
		if floor != nil {
			m += fmt.Sprintf("; an empty main linking bpfsup's libraries idles at %.1f MiB (%.1f anonymous, %.1f of its %.1f MiB of code and read-only data)",
				floor.RSS.Median, floor.AnonMiB, floor.FileMiB, floor.CodeMiB)
		}
		t = append(t, Target{Target: name, Met: idle.RSS.Max < 10, Measured: m})
	} else {
		t = append(t, notMeasured(name))
	}
	name = "bpfsup idle under 1% of a core"
	if idle != nil {
		t = append(t, Target{Target: name, Met: idle.CPUPercent < 1,
			Measured: fmt.Sprintf("%.2f%% over %.0f s", idle.CPUPercent, idle.WindowS)})
	} else {
		t = append(t, notMeasured(name))
	}
	return append(t, b.floorTargets()...)
}

// floorTargets are the targets of issue #21: bpfsup close to the floor a Go
// supervisor stands on here.
func (b *bench) floorTargets() []Target {
	var t []Target
	add := func(name string, ok bool, met bool, measured string) {
		if !ok {
			t = append(t, Target{Target: name, Measured: "not measured (section failed or skipped)", Unmeasured: true})
			return
		}
		t = append(t, Target{Target: name, Met: met, Measured: measured})
	}
	own, helper, goFloor := b.startupRow(startupBpfsup), b.startupRow(startupHelper), b.startupRow(startupGo)
	deps := b.startupRow(startupDeps)
	haveFloor := own != nil && helper != nil && goFloor != nil
	var floor float64
	// libsFloor says where the floor stands once bpfsup's libraries are
	// linked (bench/cmd/depsfloor): their package initialisation runs in
	// every program that links them, before main.
	libsFloor := func(ownMs float64) string {
		if deps == nil || !haveFloor {
			return ""
		}
		f := deps.Stats.Median + helper.Stats.Median
		return fmt.Sprintf("; with bpfsup's libraries linked the floor is %s ms (depsfloor %s + helper %s): %s ms above it",
			fmtMs(f), fmtMs(deps.Stats.Median), fmtMs(helper.Stats.Median), fmtMs(ownMs-f))
	}
	if haveFloor {
		floor = goFloor.Stats.Median + helper.Stats.Median
		d := own.Stats.Median - goFloor.Stats.Median
		m := fmt.Sprintf("%s ms above (bpfsup %s ms, gohello %s ms)", fmtMs(d), fmtMs(own.Stats.Median), fmtMs(goFloor.Stats.Median))
		if deps != nil {
			m += fmt.Sprintf("; an empty main linking bpfsup's libraries (depsfloor) takes %s ms, %s above gohello: bpfsup is %s ms above it",
				fmtMs(deps.Stats.Median), fmtMs(deps.Stats.Median-goFloor.Stats.Median), fmtMs(own.Stats.Median-deps.Stats.Median))
		}
		add("Start-up (`bpfsup version`, fork to exit) within 3 ms of an empty Go program's", true, d < 3, m)
	} else {
		add("Start-up (`bpfsup version`, fork to exit) within 3 ms of an empty Go program's", false, false, "")
	}

	a, bt := b.readyRow("small", 1, "bpfsup-adopt"), b.readyRow("small", 1, "bpftool")
	if a != nil && bt != nil {
		r := a.Stats.Median / bt.Stats.Median
		m := fmt.Sprintf("ratio %.2f (bpfsup adopt %s ms, bpftool load and attach %s ms)", r, fmtMs(a.Stats.Median), fmtMs(bt.Stats.Median))
		if haveFloor {
			m += fmt.Sprintf("; floor of a Go supervisor here %s ms (gohello %s + child through the helper %s)",
				fmtMs(floor), fmtMs(goFloor.Stats.Median), fmtMs(helper.Stats.Median))
			m += libsFloor(a.Stats.Median)
		}
		add("Restart-to-ready, 1 small program: bpfsup adopting at most bpftool's load and attach (ratio ≤ 1.0)", true, r <= 1, m)
	} else {
		add("Restart-to-ready, 1 small program: bpfsup adopting at most bpftool's load and attach (ratio ≤ 1.0)", false, false, "")
	}

	ha := b.readyRow("heavy", 1, "bpfsup-adopt")
	add("Restart-to-ready, 1 verifier-heavy program adopted within 5 ms of the Go floor", ha != nil && haveFloor,
		ha != nil && ha.Stats.Median-floor < 5,
		func() string {
			if ha == nil || !haveFloor {
				return ""
			}
			return fmt.Sprintf("%s ms above (adopt %s ms, floor %s ms)", fmtMs(ha.Stats.Median-floor), fmtMs(ha.Stats.Median), fmtMs(floor)) +
				libsFloor(ha.Stats.Median)
		}())

	s100, s1000 := b.scaleRow(100), b.scaleRow(1000)
	if s100 != nil {
		add("100 objects × 10 maps: adopt under 40 ms, `status` and `status --json` under 30 ms", true,
			s100.Adopt.Median < 40 && s100.Status.Median < 30 && s100.JSON.Median < 30,
			fmt.Sprintf("adopt %s ms, status %s ms, --json %s ms (medians); the floor on this machine: adopt %s ms, status %s ms (bench/cmd/pinfloor); adopt with each object's lock taken and manifest read, as the pin layout asks: %s ms",
				fmtMs(s100.Adopt.Median), fmtMs(s100.Status.Median), fmtMs(s100.JSON.Median), fmtMs(s100.FloorAdopt.Median), fmtMs(s100.FloorStatus.Median),
				fmtMs(s100.FloorLockedAdopt.Median)))
	} else {
		add("100 objects × 10 maps: adopt under 40 ms, `status` and `status --json` under 30 ms", false, false, "")
	}
	if s1000 != nil {
		add("1000 objects × 10 maps measured", true, true,
			fmt.Sprintf("load %s ms, adopt %s ms (%s ms an object), status %s ms, --json %s ms (medians)", fmtMs(s1000.Load.Median),
				fmtMs(s1000.Adopt.Median), fmtMs(s1000.Adopt.Median/1000), fmtMs(s1000.Status.Median), fmtMs(s1000.JSON.Median)))
	} else {
		add("1000 objects × 10 maps measured", false, false, "")
	}

	name := "Child restart within 2 ms of fork+exec through the same exec helper"
	if r := b.res.Restart; r != nil && r.HelperS.N > 0 {
		d := r.BpfsupS.Median - r.HelperS.Median
		add(name, true, d < 2, fmt.Sprintf("%s ms above (bpfsup %s ms, through the helper %s ms, of which the helper %s ms above bare fork+exec %s ms)",
			fmtMs(d), fmtMs(r.BpfsupS.Median), fmtMs(r.HelperS.Median), fmtMs(r.HelperS.Median-r.ForkExecS.Median), fmtMs(r.ForkExecS.Median)))
	} else {
		add(name, false, false, "")
	}
	return t
}

func (b *bench) scaleRow(objects int) *ScaleRow {
	for i := range b.res.Scale {
		if b.res.Scale[i].Objects == objects {
			return &b.res.Scale[i]
		}
	}
	return nil
}

func sum(v []int) int {
	s := 0
	for _, x := range v {
		s += x
	}
	return s
}

func kindName(kind string) string {
	if kind == "heavy" {
		return "verifier-heavy"
	}
	return "small"
}

// fmtMs prints a time in milliseconds with about three significant digits.
func fmtMs(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// goBound is the ratio that a supervisor written in Go could reach at one
// verifier-heavy program on this machine if its own work took no time at
// all: its start-up floor is a Go program that does nothing plus the child
// started through the exec helper, and a load adds to that what bpfsup's
// load takes above bpfsup's own start-up and helper.
func (b *bench) goBound() string {
	load := b.readyRow("heavy", 1, "bpfsup-load")
	own, helper, goFloor := b.startupRow(startupBpfsup), b.startupRow(startupHelper), b.startupRow(startupGo)
	if load == nil || own == nil || helper == nil || goFloor == nil {
		return ""
	}
	floor := goFloor.Stats.Median + helper.Stats.Median
	work := load.Stats.Median - own.Stats.Median - helper.Stats.Median
	if work <= 0 {
		return ""
	}
	return fmt.Sprintf("bound at 1 prog for any Go supervisor here: %.1fx (a start-up floor of %s ms, Go %s + child through the helper %s, against %s ms of load work)",
		ratio(floor+work, floor), fmtMs(floor), fmtMs(goFloor.Stats.Median), fmtMs(helper.Stats.Median), fmtMs(work))
}
