package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"time"
)

// Child restart: benchchild in "crash" mode reports its start (CLOCK_MONOTONIC
// when main runs, after checking its fds) and, just before exit(1), its
// death. The restart latency is the next start minus the death, both clocks
// read inside the children, so nothing of the benchmark's own scheduling is
// in it.
//
//	bpfsup     bpfsup run --restart always --restart-delay 0 --start-limit 0
//	           with the small object attached: bpfsup reaps the child, and
//	           starts the next one through its exec helper (the native
//	           one, /bin/sh where there is none), with the map fd
//	fork+exec  the benchmark's own loop: exec.Cmd Start, Wait, Start ...,
//	           no fds: the floor any supervisor stands on
//	helper     the same loop through bpfsup's exec helper: the floor of a
//	           supervisor starting its child the way bpfsup does, so that
//	           the helper's own cost is shown apart from bpfsup's
//
// The restarts run in blocks, the two sides taking turns, so that a change
// of the machine's load touches both alike.

// RestartResult is the child restart comparison.
type RestartResult struct {
	Restarts  int       `json:"restarts"`
	Bpfsup    []float64 `json:"bpfsup_ms"`
	ForkExec  []float64 `json:"forkexec_ms"`
	BpfsupS   Stats     `json:"bpfsup_stats_ms"`
	ForkExecS Stats     `json:"forkexec_stats_ms"`
	// Helper is fork+exec of the child through bpfsup's exec helper, as
	// bpfsup starts it: the honest floor for bpfsup's restart.
	Helper  []float64 `json:"helper_ms"`
	HelperS Stats     `json:"helper_stats_ms"`
}

const restartBlocks = 4

func (b *bench) restartSection() error {
	e := b.newBpfsupEnv("restart")
	cfg := filepath.Join(b.work, "restart.toml")
	if err := writeConfig(cfg, []cfgObject{{Path: b.objs["small"][1], Name: "rs",
		Attach: []cfgAttach{{Program: "p0", Hook: "xdp:" + b.ifaces[0]}}}}); err != nil {
		return err
	}
	per := (b.restarts + restartBlocks - 1) / restartBlocks
	res := &RestartResult{}
	for blk := 0; blk < restartBlocks; blk++ {
		// bpfsup: per restarts, so per+1 starts.
		b.ready.drain()
		c := e.cmd("run", "-c", cfg, "--netns", b.rns.path, "--restart", "always", "--restart-delay", "0",
			"--start-limit", "0", "--stop-timeout", "5s", "--", b.childBin, "crash")
		p, err := startProc("bpfsup run", c, filepath.Join(b.work, "bpfsup-restart.log"))
		if err != nil {
			return err
		}
		evs, err := b.collect(per+1, p)
		p.stop(10 * time.Second)
		if err != nil {
			return fmt.Errorf("bpfsup: %w", err)
		}
		lat, err := restartLatencies(evs, 1)
		if err != nil {
			return fmt.Errorf("bpfsup: %w", err)
		}
		if len(lat) < per {
			return fmt.Errorf("bpfsup: %d restarts measured, want %d", len(lat), per)
		}
		res.Bpfsup = append(res.Bpfsup, lat[:per]...)

		lat, err = b.forkExecRestarts(per, b.childBin, "crash")
		if err != nil {
			return fmt.Errorf("fork+exec: %w", err)
		}
		res.ForkExec = append(res.ForkExec, lat...)
		lat, err = b.forkExecRestarts(per, b.throughHelper(b.childBin, "crash")...)
		if err != nil {
			return fmt.Errorf("fork+exec through the exec helper: %w", err)
		}
		res.Helper = append(res.Helper, lat...)
	}
	if err := e.down(); err != nil {
		return err
	}
	res.Restarts = len(res.Bpfsup)
	res.BpfsupS, res.ForkExecS, res.HelperS = summarize(res.Bpfsup), summarize(res.ForkExec), summarize(res.Helper)
	b.res.Restart = res
	logf("restart bpfsup    median %.3f ms p99 %.3f ms (n=%d)", res.BpfsupS.Median, res.BpfsupS.P99, res.BpfsupS.N)
	logf("restart fork+exec median %.3f ms p99 %.3f ms (n=%d)", res.ForkExecS.Median, res.ForkExecS.P99, res.ForkExecS.N)
	logf("restart helper    median %.3f ms p99 %.3f ms (n=%d)", res.HelperS.Median, res.HelperS.P99, res.HelperS.N)
	return nil
}

// forkExecRestarts runs argv per+1 times one after another, as a supervisor
// that does nothing else would (exec.Cmd Start, Wait, Start ...; no fds), and
// returns the per restart latencies the children reported.
func (b *bench) forkExecRestarts(per int, argv ...string) ([]float64, error) {
	b.ready.drain()
	done := make(chan error, 1)
	go func() {
		for i := 0; i <= per; i++ {
			c := exec.Command(argv[0], argv[1:]...)
			c.Env = append(os.Environ(), "BENCH_SOCK="+b.ready.path)
			c.Stdout, c.Stderr = os.Stdout, os.Stderr
			c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
			if err := c.Start(); err != nil {
				done <- err
				return
			}
			_ = c.Wait() // exit status 1 is the crash
		}
		done <- nil
	}()
	if err := <-done; err != nil {
		return nil, err
	}
	evs, err := b.collect(per+1, nil)
	if err != nil {
		return nil, err
	}
	lat, err := restartLatencies(evs, 0)
	if err != nil {
		return nil, err
	}
	if len(lat) < per {
		return nil, fmt.Errorf("%d restarts measured, want %d", len(lat), per)
	}
	return lat[:per], nil
}

// collect gathers the reports of starts children: every start and death.
// It gives up when p (if not nil) exits first.
func (b *bench) collect(starts int, p *proc) ([]readyEvent, error) {
	var evs []readyEvent
	var done <-chan struct{}
	if p != nil {
		done = p.done
	}
	timeout := time.NewTimer(5 * time.Minute)
	defer timeout.Stop()
	n, dies := 0, 0
	// The last child's death report follows its start.
	for n < starts || dies < starts {
		select {
		case ev := <-b.ready.events:
			if ev.ts < b.ready.since.Load() {
				continue
			}
			evs = append(evs, ev)
			if ev.kind == "start" {
				n++
			} else {
				dies++
			}
		case <-done:
			return nil, fmt.Errorf("%s exited after %d starts: %v%s", p.name, n, p.err, p.logTail())
		case <-timeout.C:
			return nil, fmt.Errorf("only %d starts in 5 minutes", n)
		}
	}
	return evs, nil
}

// restartLatencies pairs every death with the next start, in time order,
// and checks that each child got want fds.
func restartLatencies(evs []readyEvent, want int) ([]float64, error) {
	sort.Slice(evs, func(i, j int) bool { return evs[i].ts < evs[j].ts })
	var lat []float64
	var died int64
	for _, ev := range evs {
		switch ev.kind {
		case "die":
			died = ev.ts
		case "start":
			if ev.nfds != want {
				return nil, fmt.Errorf("child %d got %d fds, want %d", ev.pid, ev.nfds, want)
			}
			if died != 0 {
				lat = append(lat, ms(ev.ts-died))
				died = 0
			}
		}
	}
	return lat, nil
}
