package upgrade

import (
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// TestChildOnUpgrade checks the three things --on-upgrade can do to the
// child after an upgrade that changed a program: restart it with the new
// fds (the default), send it a signal, leave it alone.
func TestChildOnUpgrade(t *testing.T) {
	for _, tc := range []struct {
		onUpgrade string // "" for the default
		says      string // in bpfsup reload's output
	}{
		{"", "child restarted"},
		{"signal:HUP", "child signalled SIGHUP"},
		{"none", "child left running"},
	} {
		name := tc.onUpgrade
		if name == "" {
			name = "default"
		}
		t.Run(strings.ReplaceAll(name, ":", "-"), func(t *testing.T) {
			e := testutil.MustEnv(t)
			nsR := testutil.MustNetns(t, "upc")
			_, x := testutil.MustVethPair(t, nsR, nsR)
			obj := filepath.Join(t.TempDir(), "dropfilter.bpf.o")
			deploy(t, obj, "dropfilter")
			args := []string{"-o", obj, "-a", "xdp_drop@xdp:" + x.Name, "--netns", nsR.Path}
			if tc.onUpgrade != "" {
				args = append(args, "--on-upgrade", tc.onUpgrade)
			}
			p := startBpfsup(t, e, "", args...)
			first := waitChildren(t, p, 1)

			// A reload that changes nothing leaves the child alone whatever
			// --on-upgrade says.
			if out := e2e.MustRun(t, e, "reload"); !strings.Contains(out, "child unchanged") {
				t.Fatalf("a reload without a change did something to the child:\n%s", out)
			}
			deploy(t, obj, "dropfilter_v2")
			if out := e2e.MustRun(t, e, "reload"); !strings.Contains(out, tc.says) {
				t.Fatalf("bpfsup reload does not say %q:\n%s", tc.says, out)
			}

			switch tc.onUpgrade {
			case "":
				second := waitChildren(t, p, 2)
				testutil.WaitProcGone(t, first, 5*time.Second)
				if second == first || !strings.Contains(p.Output(), fmt.Sprintf("child %d: got terminated", first)) {
					t.Fatalf("the child %d was not stopped and started again:\n%s", first, p.Output())
				}
				// A restart for an upgrade is no failure: the start limit
				// does not count it (default: 5 starts in 10s).
				// A reload that comes while the child of the last one is
				// still stopping says so ("child stopping") and starts no
				// other: count the starts the reloads said they made.
				starts := 2
				for i := 0; i < 5; i++ {
					deploy(t, obj, []string{"dropfilter", "dropfilter_v2"}[i%2])
					if strings.Contains(e2e.MustRun(t, e, "reload"), "child restarted") {
						starts++
					}
				}
				// (A child stopped so soon may die before it says hello:
				// count the starts in bpfsup's log.)
				testutil.WaitFor(t, 10*time.Second, fmt.Sprintf("%d starts of the child", starts), func() bool {
					return countLines(p, `"child started"`) == starts
				})
				select {
				case <-p.Done():
					t.Fatalf("bpfsup exited after restarts for upgrades:\n%s", p.Output())
				default:
				}
			case "signal:HUP":
				p.WaitOutput(t, fmt.Sprintf("child %d: got hangup", first), 5*time.Second)
			case "none":
				// Signals queue in order of their numbers: once the child has
				// seen SIGUSR1, it would have seen a SIGHUP sent before.
				if err := syscall.Kill(first, syscall.SIGUSR1); err != nil {
					t.Fatal(err)
				}
				p.WaitOutput(t, fmt.Sprintf("child %d: got user defined signal 1", first), 5*time.Second)
				if strings.Contains(p.Output(), "got hangup") || strings.Contains(p.Output(), "got terminated") {
					t.Fatalf("the child was signalled:\n%s", p.Output())
				}
			}
			if tc.onUpgrade != "" {
				if pids := e2e.PIDs(childLine, p.Output()); len(pids) != 1 {
					t.Fatalf("children %v, want only %d", pids, first)
				}
				if _, alive := testutil.ProcState(first); !alive {
					t.Fatalf("the child %d is gone", first)
				}
			}
		})
	}
}
