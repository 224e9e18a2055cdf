package crashtest

import (
	"math/rand/v2"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// randomKills is how many SIGKILLs TestRandomKills sends: half during a
// start, half during a reload.
const randomKills = 100

// TestRandomKills kills bpfsup with SIGKILL at random moments: during a start,
// and during a reload (SIGHUP or `bpfsup reload`, alternately) after the
// object file was switched between v1 and v2. After every kill bpfsup is
// started again and must converge to what the object file holds, with the
// map contents kept. All the while the hook is sampled: once it had the
// filter, it never goes without, and no dropped datagram gets through.
func TestRandomKills(t *testing.T) {
	n := newNetRig(t)
	r := newRig(t, n)
	s := n.startSampler(t, r.linkPins()...)
	seeded := r.seedDropPorts(t)
	rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 4))

	// Measure a start and a reload, to kill within their span.
	begin := time.Now()
	p := r.startReady(t)
	startTook := time.Since(begin)
	r.setDropCount(t, seededCount)
	first := r.checkConverged(t)
	r.setObject(t, v2)
	mark := len(p.Output())
	p.Kill(syscall.SIGHUP)
	waitFrom(t, p, mark, "msg=reloading")
	begin = time.Now()
	waitFrom(t, p, mark, "msg=reloaded")
	reloadTook := time.Since(begin)
	r.checkConverged(t)
	kill(t, p)
	t.Logf("a start took %v, a reload %v", startTook.Round(time.Millisecond), reloadTook.Round(time.Millisecond))

	kills := randomKills
	if testing.Short() {
		kills = 20 // -short: the VMs of `make kernels`, under emulation
	}
	var duringStart, afterReady, duringReload, reloadsDone int
	for i := 0; i < kills/2; i++ {
		// A kill at a random moment of a start.
		p := r.start(t, nil)
		time.Sleep(randomDelay(rnd, startTook))
		ready := strings.Contains(p.Output(), "child started")
		kill(t, p)
		if ready {
			afterReady++
		} else {
			duringStart++
		}

		// The next start converges.
		p = r.startReady(t)
		st := r.checkState(t, false)
		if st.maps["drop_ports"] != seeded || st.maps["drop_count"] != first.maps["drop_count"] {
			t.Fatalf("kill %d: maps are %v, were drop_ports %d and drop_count %d", 2*i+1, st.maps, seeded, first.maps["drop_count"])
		}

		// A kill at a random moment of a reload to the other version.
		if r.version == v1 {
			r.setObject(t, v2)
		} else {
			r.setObject(t, v1)
		}
		mark := len(p.Output())
		var client *exec.Cmd
		if i%2 == 0 {
			p.Kill(syscall.SIGHUP)
		} else {
			client = exec.Command(r.env.Bin, r.env.Args("reload")...)
			if err := client.Start(); err != nil {
				t.Fatal(err)
			}
		}
		// Killed at a random moment from the reload's beginning on.
		waitFrom(t, p, mark, "msg=reloading")
		time.Sleep(randomDelay(rnd, reloadTook))
		if strings.Contains(p.Output()[mark:], "msg=reloaded") {
			reloadsDone++
		} else {
			duringReload++
		}
		kill(t, p)
		if client != nil {
			_ = client.Wait() // fails: its supervisor died
		}
	}

	p = r.startReady(t)
	st := r.checkConverged(t)
	c := r.contents(t)
	if !slices.Equal(c.ports, r.wantPorts()) || c.count < seededCount {
		t.Errorf("map contents after %d kills: ports %v count %d, want ports %v count >= %d", kills, c.ports, c.count, r.wantPorts(), seededCount)
	}
	if st.maps["drop_ports"] != seeded {
		t.Errorf("drop_ports is map %d, not the seeded %d", st.maps["drop_ports"], seeded)
	}
	n.traffic.waitPassing(t)
	s.check(t)
	stop(t, p)
	t.Logf("%d kills: %d during a start, %d after the child started; %d during a reload, %d after it completed",
		kills, duringStart, afterReady, duringReload, reloadsDone)
	if duringStart == 0 || duringReload == 0 {
		t.Errorf("no kill landed during a start (%d) or during a reload (%d): the random moments are off", duringStart, duringReload)
	}
}

// waitFrom waits until p's output from byte mark on contains s, polling
// every millisecond so that what follows happens close to the moment.
func waitFrom(t *testing.T, p *testutil.Proc, mark int, s string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(p.Output()[mark:], s) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the output within 20s:\n%s", s, p.Output())
		}
		time.Sleep(time.Millisecond)
	}
}

// randomDelay is a random moment within 1.2 times d: mostly during the
// operation that takes d, sometimes just after it.
func randomDelay(rnd *rand.Rand, d time.Duration) time.Duration {
	return time.Duration(rnd.Int64N(int64(d)*12/10 + 1))
}
