package main

import (
	"debug/elf"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Footprint: bpfsup supervising a waiting child, with ten objects (the small
// object ten times over, each attached to its own interface). After
// footprintSettle, /proc/PID/stat (utime+stime) is read at the start and end
// of a footprintWindow, and VmRSS once a second in between. Only bpfsup's
// own process is counted, not the child. Three runs: idle after loading
// from nothing, idle after a restart that adopted, and with --metrics-addr
// scraped once a second. Then the floor, measured the same way: depsfloor
// asleep, a program that links bpfsup's libraries and does nothing else.

const (
	footprintObjects = 10
	footprintWindow  = 10 * time.Second
	footprintSettle  = 2 * time.Second
	// clockTicks is USER_HZ, the unit of /proc/PID/stat times: 100 on every
	// Linux architecture Go supports.
	clockTicks = 100
)

// FootprintRun is one footprint measurement.
type FootprintRun struct {
	Name   string    `json:"name"`
	RSSMiB []float64 `json:"rss_mib"`
	RSS    Stats     `json:"rss_stats_mib"`
	HWMMiB float64   `json:"hwm_mib"`
	// RSS in its two parts (RssAnon, RssFile; medians): the heap, stacks
	// and runtime's own memory, and the pages of the binary mapped in,
	// clean and shared with every process that maps the same file.
	AnonMiB    float64 `json:"rss_anon_mib"`
	FileMiB    float64 `json:"rss_file_mib"`
	CPUPercent float64 `json:"cpu_percent_of_one_core"`
	WindowS    float64 `json:"window_s"`
	Scrapes    int     `json:"scrapes,omitempty"`
	Threads    int64   `json:"threads"`
	// CodeMiB is the size of the binary's code and read-only data (its
	// loadable segments that are not writable): what RssFile grows
	// towards as the process runs more of its code.
	CodeMiB float64 `json:"code_mib"`
}

// The rows of the footprint: idle after loading from nothing, idle after a
// restart that adopted what the first run pinned, and the floor.
const (
	footprintIdle    = "idle"
	footprintAdopted = "idle, after a restart that adopted"
	footprintFloor   = "floor: depsfloor asleep (bpfsup's libraries, nothing done)"
)

func (b *bench) footprintSection() error {
	e := b.newBpfsupEnv("footprint")
	var objs []cfgObject
	for i := 0; i < footprintObjects; i++ {
		objs = append(objs, cfgObject{Path: b.objs["small"][1], Name: fmt.Sprintf("fp%d", i),
			Attach: []cfgAttach{{Program: "p0", Hook: "xdp:" + b.ifaces[i]}}})
	}
	cfg := filepath.Join(b.work, "footprint.toml")
	if err := writeConfig(cfg, objs); err != nil {
		return err
	}
	// The first run loads from nothing; the pins stay when it stops, and
	// the next ones adopt them, as a restart of bpfsup does.
	for _, run := range []struct {
		name    string
		scraped bool
	}{{footprintIdle, false}, {footprintAdopted, false}, {"metrics scraped every second", true}} {
		name, scraped := run.name, run.scraped
		args := []string{"-c", cfg, "--netns", b.rns.path, "--restart", "never"}
		addr := ""
		if scraped {
			var err error
			if addr, err = freePort(); err != nil {
				return err
			}
			args = append(args, "--metrics-addr", addr)
		}
		c := e.cmd("run", append(args, "--", b.childBin, "wait")...)
		b.ready.drain()
		p, err := startProc("bpfsup run", c, filepath.Join(b.work, "bpfsup-footprint.log"))
		if err != nil {
			return err
		}
		if _, err := b.ready.waitStart(p, time.Minute); err != nil {
			return err
		}
		run, err := b.footprint(p.pid(), name, addr)
		p.stop(10 * time.Second)
		if err != nil {
			return err
		}
		b.res.Footprint = append(b.res.Footprint, *run)
		logf("footprint %-30s RSS median %.1f MiB max %.1f MiB, CPU %.2f%% of a core", name, run.RSS.Median, run.RSS.Max, run.CPUPercent)
	}
	if err := e.down(); err != nil {
		return err
	}
	if b.depsFloorBin == "" {
		return nil
	}
	c := exec.Command(b.depsFloorBin)
	c.Env = append(os.Environ(), "DEPSFLOOR_IDLE=1")
	p, err := startProc("depsfloor", c, "")
	if err != nil {
		return err
	}
	defer p.stop(10 * time.Second)
	run, err := b.footprint(p.pid(), footprintFloor, "")
	if err != nil {
		return err
	}
	b.res.Footprint = append(b.res.Footprint, *run)
	logf("footprint %-30s RSS median %.1f MiB", footprintFloor, run.RSS.Median)
	return nil
}

// codeSize is the size of the executable's loadable segments that are not
// writable: its code and read-only data, which the kernel maps in from the
// file as the process touches them.
func codeSize(pid int) (int64, error) {
	f, err := elf.Open(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var n int64
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_W == 0 {
			n += int64(p.Memsz)
		}
	}
	return n, nil
}

func (b *bench) footprint(pid int, name, addr string) (*FootprintRun, error) {
	time.Sleep(footprintSettle) // start-up garbage is not the steady state
	r := &FootprintRun{Name: name}
	var anon, file []float64
	client := &http.Client{Timeout: 5 * time.Second}
	t0, err := procStat(pid)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for i := 0; i < int(footprintWindow/time.Second); i++ {
		<-tick.C
		if addr != "" {
			if err := scrape(client, addr); err != nil {
				return nil, err
			}
			r.Scrapes++
		}
		rss, err := procStatus(pid, "VmRSS")
		if err != nil {
			return nil, err
		}
		r.RSSMiB = append(r.RSSMiB, float64(rss)/(1<<20))
		anonB, err := procStatus(pid, "RssAnon")
		if err != nil {
			return nil, err
		}
		fileB, err := procStatus(pid, "RssFile")
		if err != nil {
			return nil, err
		}
		anon = append(anon, float64(anonB)/(1<<20))
		file = append(file, float64(fileB)/(1<<20))
	}
	r.AnonMiB, r.FileMiB = summarize(anon).Median, summarize(file).Median
	t1, err := procStat(pid)
	if err != nil {
		return nil, err
	}
	r.WindowS = time.Since(start).Seconds()
	r.CPUPercent = float64(t1-t0) / clockTicks / r.WindowS * 100
	hwm, err := procStatus(pid, "VmHWM")
	if err != nil {
		return nil, err
	}
	r.HWMMiB = float64(hwm) / (1 << 20)
	r.RSS = summarize(r.RSSMiB)
	r.Threads, _ = procThreads(pid)
	code, err := codeSize(pid)
	if err != nil {
		return nil, err
	}
	r.CodeMiB = float64(code) / (1 << 20)
	return r, nil
}

// scrape fetches /metrics and checks that it speaks of the ten objects.
func scrape(c *http.Client, addr string) error {
	resp, err := c.Get("http://" + addr + "/metrics")
	if err != nil {
		return fmt.Errorf("scrape: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("scrape: %w", err)
	}
	want := fmt.Sprintf("bpfsup_objects %d", footprintObjects)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
		return fmt.Errorf("scrape: status %d, %q not in the metrics", resp.StatusCode, want)
	}
	return nil
}

// freePort returns a loopback address with a port free a moment ago.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func procThreads(pid int) (int64, error) {
	b, err := readFileString(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(b, "\n") {
		if v, ok := strings.CutPrefix(line, "Threads:"); ok {
			var n int64
			_, err := fmt.Sscan(strings.TrimSpace(v), &n)
			return n, err
		}
	}
	return 0, fmt.Errorf("no Threads in /proc/%d/status", pid)
}
