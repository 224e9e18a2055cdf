package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Scale: K objects of ten maps and one XDP program each (the generated
// scale10maps object under K names), each program attached to its own
// interface, for K in 1, 10, 100, 1000. For each K: bpfsup from nothing
// (load), bpfsup again with the pins (adopt), both to the child running with
// all 10K map fds, then `bpfsup status` and `bpfsup status --json` with no
// supervisor running, which read every pin, manifest and the kernel's view.

// ScaleRow is one object count.
type ScaleRow struct {
	Objects  int       `json:"objects"`
	Maps     int       `json:"maps"`
	Handed   int       `json:"handed_fds"` // map fds the child got`
	LoadMs   []float64 `json:"load_ms"`
	AdoptMs  []float64 `json:"adopt_ms"`
	StatusMs []float64 `json:"status_ms"`
	JSONMs   []float64 `json:"status_json_ms"`
	Load     Stats     `json:"load_stats_ms"`
	Adopt    Stats     `json:"adopt_stats_ms"`
	Status   Stats     `json:"status_stats_ms"`
	JSON     Stats     `json:"status_json_stats_ms"`
	// The floor (bench/cmd/pinfloor): every pin opened and read, no more;
	// for adopt, the child started with the map fds.
	FloorAdoptMs  []float64 `json:"floor_adopt_ms,omitempty"`
	FloorStatusMs []float64 `json:"floor_status_ms,omitempty"`
	FloorAdopt    Stats     `json:"floor_adopt_stats_ms"`
	FloorStatus   Stats     `json:"floor_status_stats_ms"`
	// The floor under DESIGN.md's pin layout (pinfloor -state): the same,
	// after each object's lock was taken and its manifest read (not
	// decoded: the format is bpfsup's choice).
	FloorLockedAdoptMs []float64 `json:"floor_locked_adopt_ms,omitempty"`
	FloorLockedAdopt   Stats     `json:"floor_locked_adopt_stats_ms"`
}

const (
	scaleMaps      = 10
	scaleHandedMax = 100
)

func (b *bench) scaleSection() error {
	for _, k := range b.scaleCounts {
		e := b.newBpfsupEnv(fmt.Sprintf("scale%d", k))
		// Above scaleHandedMax objects the maps are not handed to the child
		// (access = "none"): bpfsup holds each map's fd and a duplicate of
		// each it hands, 2×10K fds, which at 1000 objects is over the 20000
		// of RLIMIT_NOFILE that the bench's VM allows and bpfsup, without
		// CAP_SYS_RESOURCE there, cannot raise. They are still pinned,
		// adopted and checked.
		handed := k <= scaleHandedMax
		var objs []cfgObject
		for i := 0; i < k; i++ {
			o := cfgObject{Path: b.scaleObj, Name: fmt.Sprintf("s%04d", i),
				Attach: []cfgAttach{{Program: "p", Hook: "xdp:" + b.ifaces[i]}}}
			if !handed {
				o.Maps = map[string]cfgMap{}
				for m := range scaleMapTypes {
					o.Maps[fmt.Sprintf("m%d", m)] = cfgMap{Access: "none"}
				}
			}
			objs = append(objs, o)
		}
		nfds := k * scaleMaps
		if !handed {
			nfds = 0
		}
		cfg := filepath.Join(b.work, fmt.Sprintf("scale%d.toml", k))
		if err := writeConfig(cfg, objs); err != nil {
			return err
		}
		row := ScaleRow{Objects: k, Maps: k * scaleMaps, Handed: nfds}
		for r := 0; r < b.reps; r++ {
			if err := e.down(); err != nil {
				return err
			}
			d, _, err := b.readyRun(e, cfg, "loaded", k, nfds)
			if err != nil {
				return fmt.Errorf("%d objects: load: %w", k, err)
			}
			row.LoadMs = append(row.LoadMs, d)
			if d, _, err = b.readyRun(e, cfg, "adopted", k, nfds); err != nil {
				return fmt.Errorf("%d objects: adopt: %w", k, err)
			}
			row.AdoptMs = append(row.AdoptMs, d)

			t0 := mono()
			out, err := runCmd(e.cmd("status"))
			t1 := mono()
			if err != nil {
				return fmt.Errorf("%d objects: %w", k, err)
			}
			if n := strings.Count("\n"+out, "\nobject "); n != k {
				return fmt.Errorf("%d objects: bpfsup status shows %d objects:\n%s", k, n, out)
			}
			if n := strings.Count(out, " attached"); n < k {
				return fmt.Errorf("%d objects: bpfsup status shows %d attached links:\n%s", k, n, out)
			}
			row.StatusMs = append(row.StatusMs, ms(t1-t0))

			t0 = mono()
			out, err = runCmd(e.cmd("status", "--json"))
			t1 = mono()
			if err != nil {
				return fmt.Errorf("%d objects: status --json: %w", k, err)
			}
			var doc struct{ Objects []json.RawMessage }
			if err := json.Unmarshal([]byte(out), &doc); err != nil || len(doc.Objects) != k {
				return fmt.Errorf("%d objects: bpfsup status --json has %d objects (%v):\n%.2000s", k, len(doc.Objects), err, out)
			}
			row.JSONMs = append(row.JSONMs, ms(t1-t0))

			if b.pinFloorBin != "" {
				if err := b.scaleFloor(e, &row); err != nil {
					return fmt.Errorf("%d objects: %w", k, err)
				}
			}
		}
		if err := e.down(); err != nil {
			return err
		}
		if err := b.rns.checkDetached(); err != nil {
			return err
		}
		row.Load, row.Adopt, row.Status, row.JSON = summarize(row.LoadMs), summarize(row.AdoptMs), summarize(row.StatusMs), summarize(row.JSONMs)
		row.FloorAdopt, row.FloorStatus = summarize(row.FloorAdoptMs), summarize(row.FloorStatusMs)
		row.FloorLockedAdopt = summarize(row.FloorLockedAdoptMs)
		b.res.Scale = append(b.res.Scale, row)
		logf("scale %4d objects: load %8.2f ms  adopt %7.2f ms  status %7.2f ms  --json %7.2f ms", k, row.Load.Median, row.Adopt.Median, row.Status.Median, row.JSON.Median)
	}
	return nil
}

// scaleFloor times pinfloor on e's pins, taking its turn with bpfsup in
// the same repetition: fork to the child running with every map's fd
// (adopt), without and then with each object's lock and manifest (-state),
// and fork to exit (status).
func (b *bench) scaleFloor(e *bpfsupEnv, row *ScaleRow) error {
	for _, locked := range []bool{false, true} {
		args := []string{"adopt"}
		if row.Handed == 0 {
			args = append(args, "-no-maps")
		}
		if locked {
			args = append(args, "-state", e.stateDir)
		}
		c := exec.Command(b.pinFloorBin, append(args, e.pinRoot, b.childBin, "exit")...)
		c.Env = append(os.Environ(), "BENCH_SOCK="+b.ready.path, "PINFLOOR_HELPER="+b.nativeHelper)
		d, err := b.timeToChild("pinfloor "+strings.Join(args, " "), c, "", row.Handed)
		if err != nil {
			return err
		}
		if locked {
			row.FloorLockedAdoptMs = append(row.FloorLockedAdoptMs, d)
		} else {
			row.FloorAdoptMs = append(row.FloorAdoptMs, d)
		}
	}

	t0 := mono()
	out, err := runCmd(exec.Command(b.pinFloorBin, "status", e.pinRoot))
	t1 := mono()
	if err != nil {
		return err
	}
	if n := strings.Count(out, " map id "); n != row.Maps {
		return fmt.Errorf("pinfloor status read %d maps, want %d", n, row.Maps)
	}
	row.FloorStatusMs = append(row.FloorStatusMs, ms(t1-t0))
	return nil
}
