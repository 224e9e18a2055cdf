package upgrade

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// quietWindow is how long the watch test watches for a reload that must not
// come: several times bpfsup's debounce (200ms), so that a second burst of
// events would have made a second reload by then.
const quietWindow = time.Second

// TestWatchReloadsOnRename deploys a new object file, and then a new
// config, by writing a temporary file and renaming it over the old one, as
// deploy tools do: --watch makes exactly one reload of each.
func TestWatchReloadsOnRename(t *testing.T) {
	e := testutil.MustEnv(t)
	nsR := testutil.MustNetns(t, "upw")
	_, x := testutil.MustVethPair(t, nsR, nsR)
	_, y := testutil.MustVethPair(t, nsR, nsR)
	dir := t.TempDir()
	obj := filepath.Join(dir, "dropfilter.bpf.o")
	deploy(t, obj, "dropfilter")
	cfgPath := filepath.Join(dir, "bpfsup.toml")
	cfg := config{object: obj, netns: nsR.Path, attach: []attachment{{"xdp_drop", "xdp:" + x.Name}}}
	cfg.write(t, cfgPath)
	p := startBpfsup(t, e, "", "-c", cfgPath, "--watch", "--on-upgrade", "none")
	waitChildren(t, p, 1)
	gen := status(t, e, "dropfilter").Generation
	linkID, progID := linkIDs(t, e, "xdp_drop")

	// Files beside the watched ones do not count.
	writeAtomic(t, filepath.Join(dir, "other.bpf.o"), []byte("not watched"))

	deploy(t, obj, "dropfilter_v2")
	waitOneReload(t, p, 1)
	if g := status(t, e, "dropfilter").Generation; g != gen+1 {
		t.Fatalf("generation %d after the deploy, want %d", g, gen+1)
	}
	if l, pr := linkIDs(t, e, "xdp_drop"); l != linkID || pr == progID {
		t.Fatalf("link %d runs program %d; was link %d running %d", l, pr, linkID, progID)
	}

	// A new config (a second attachment) by rename: one reload, which
	// attaches it.
	cfg.attach = append(cfg.attach, attachment{"tc_drop", "tcx/ingress:" + y.Name})
	cfg.write(t, cfgPath)
	waitOneReload(t, p, 2)
	if _, err := linkIDsErr(e, "tc_drop"); err != nil {
		t.Fatalf("the new attachment of the new config: %v", err)
	}
}

// waitOneReload waits until bpfsup has reloaded n times in all, and fails
// if one more reload starts within quietWindow.
func waitOneReload(t *testing.T, p *testutil.Proc, n int) {
	t.Helper()
	testutil.WaitFor(t, 10*time.Second, "the reload", func() bool { return countLines(p, "reloaded") >= n })
	// Watching for something that must not happen takes a window of time.
	deadline := time.Now().Add(quietWindow)
	for time.Now().Before(deadline) {
		if got := countLines(p, "reloading"); got != n {
			t.Fatalf("%d reloads, want %d: the deploy made more than one:\n%s", got, n, p.Output())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if strings.Count(p.Output(), `reason="file changed"`) != n {
		t.Fatalf("not every reload came from the watch:\n%s", p.Output())
	}
}
