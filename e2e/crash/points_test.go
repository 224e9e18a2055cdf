package crashtest

import (
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/crash"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// scenario is a start of bpfsup to crash at every step of.
type scenario struct {
	name string
	// prepare readies a fresh rig for the start and returns what the start
	// must preserve.
	prepare func(t *testing.T, r *rig) before
}

// before is what a crashed start must preserve.
type before struct {
	seededPorts uint32 // id of the seeded drop_ports map
	installed   *state // what ran before an upgrade
	// migrated: the upgrade replaces drop_ports by a bigger copy.
	migrated bool
}

var scenarios = []scenario{
	{
		// Nothing pinned but the seeded drop_ports map: every map, program
		// and link is created, pinned and moved.
		name: "first-start",
		prepare: func(t *testing.T, r *rig) before {
			return before{seededPorts: r.seedDropPorts(t)}
		},
	},
	{
		// v1 installed and running with map contents, then bpfsup killed and
		// started with v2: programs are loaded and swapped behind the link.
		name: "upgrade",
		prepare: func(t *testing.T, r *rig) before {
			b := before{seededPorts: r.seedDropPorts(t)}
			p := r.startReady(t)
			r.setDropCount(t, seededCount)
			st := r.checkConverged(t)
			b.installed = &st
			kill(t, p)
			r.setObject(t, v2)
			return b
		},
	},
	{
		// v1 installed and running, then bpfsup killed and started with
		// dropfilter_bigmap, whose drop_ports is bigger and migrated by
		// copy: a new map with the old entries, programs reloaded for it.
		name: "migrate",
		prepare: func(t *testing.T, r *rig) before {
			b := before{seededPorts: r.seedDropPorts(t), migrated: true}
			p := r.startReady(t)
			r.setDropCount(t, seededCount)
			st := r.checkConverged(t)
			b.installed = &st
			kill(t, p)
			r.migrateDropPorts(t)
			return b
		},
	},
}

// TestCrashAtEveryPoint kills bpfsup at every crash point it reaches in a
// first start and in an upgrade start (every occurrence of every step: the
// steps are taken from a traced run), starts it again, and checks that the
// hook never went without the filter once it had it (sampled every
// millisecond while bpfsup was dead and while it restarted), that no dropped
// datagram got through, that the state after the restart is the configured
// one with the map contents kept, and that no debris is left. Together the
// scenarios must reach every crash point bpfsup has.
func TestCrashAtEveryPoint(t *testing.T) {
	n := newNetRig(t)
	reached := map[string]bool{}
	for _, sc := range scenarios {
		trace := referenceTrace(t, n, sc)
		for _, step := range trace {
			reached[step] = true
		}
		t.Logf("%s reaches %d steps: %s", sc.name, len(trace), strings.Join(trace, " "))
		for _, target := range occurrences(trace) {
			t.Run(sc.name+"/"+target, func(t *testing.T) { crashAndRestart(t, n, sc, target) })
		}
	}
	for _, p := range crash.Points() {
		if !reached[p] {
			t.Errorf("no scenario reaches crash point %s: add one that does", p)
		}
	}
}

// referenceTrace runs the scenario without crashing, with tracing on, and
// returns the steps it went through: from its start until it has been
// stopped with SIGTERM once its child ran.
func referenceTrace(t *testing.T, n *netRig, sc scenario) []string {
	var trace []string
	t.Run(sc.name+"/reference", func(t *testing.T) {
		r := newRig(t, n)
		sc.prepare(t, r)
		path := filepath.Join(t.TempDir(), "trace")
		p := r.start(t, []string{crash.TraceEnvVar + "=" + path})
		p.WaitOutput(t, "child started", 20*time.Second)
		stop(t, p)
		trace = readTrace(t, path)
		if sc.name == "upgrade" && !strings.Contains(p.Output(), "swapped program in place") {
			t.Errorf("the upgrade did not swap the program in place:\n%s", p.Output())
		}
		r.checkConverged(t)
	})
	if len(trace) == 0 {
		t.Fatalf("scenario %s: no steps traced", sc.name)
	}
	return trace
}

func crashAndRestart(t *testing.T, n *netRig, sc scenario, target string) {
	r := newRig(t, n)
	s := n.startSampler(t, r.linkPins()...)
	b := sc.prepare(t, r)

	p := r.start(t, []string{crash.EnvVar + "=" + target})
	waitCrash(t, p, target)

	p = r.startReady(t)
	st := r.checkConverged(t)
	n.traffic.waitPassing(t)
	s.check(t)

	switch {
	case b.migrated:
		if st.maps["drop_ports"] == b.seededPorts {
			t.Errorf("drop_ports is still the seeded map %d, not migrated", b.seededPorts)
		}
	case st.maps["drop_ports"] != b.seededPorts:
		t.Errorf("drop_ports is map %d, not the seeded %d", st.maps["drop_ports"], b.seededPorts)
	}
	c := r.contents(t)
	if !slices.Equal(c.ports, r.wantPorts()) {
		t.Errorf("drop_ports holds %v, want %v", c.ports, r.wantPorts())
	}
	if old := b.installed; old != nil {
		for name, id := range old.maps {
			if b.migrated && name == "drop_ports" {
				continue
			}
			if st.maps[name] != id {
				t.Errorf("map %s is %d after the upgrade, was %d: not adopted", name, st.maps[name], id)
			}
		}
		if st.link != old.link {
			t.Errorf("link is %d after the upgrade, was %d: not swapped in place", st.link, old.link)
		}
		if c.count < seededCount {
			t.Errorf("drop_count is %d, was at least %d before the upgrade", c.count, seededCount)
		}
	}
	stop(t, p)
}

// waitCrash waits for bpfsup to kill itself at target. A step reached only
// once the child runs (the manifest records the child) or while stopping is
// reached by stopping bpfsup with SIGTERM, as the reference run was.
func waitCrash(t *testing.T, p *testutil.Proc, target string) {
	t.Helper()
	termed := false
	exited := testutil.Poll(20*time.Second, func() bool {
		select {
		case <-p.Done():
			return true
		default:
		}
		if !termed && strings.Contains(p.Output(), "child started") {
			p.Kill(syscall.SIGTERM)
			termed = true
		}
		return false
	})
	if !exited {
		t.Fatalf("armed with %s, bpfsup did not kill itself within 20s:\n%s", target, p.Output())
	}
	if !diedOfSIGKILL(p) {
		t.Fatalf("armed with %s, bpfsup exited with %v instead of killing itself:\n%s", target, p.Cmd.ProcessState, p.Output())
	}
}
