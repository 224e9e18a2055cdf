package upgrade

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
	"github.com/bpfsup/bpfsup/pinstore"
)

// TestXDPSecondAttachment: a reload that attaches a program to a second
// interface renames its link after its target (xdp_drop becomes
// xdp_drop-X, as a program attached to several hooks has its links named),
// keeping the very link on X, which an XDP hook could not have taken beside
// a new one; a reload back to one interface renames it back and removes the
// other.
func TestXDPSecondAttachment(t *testing.T) {
	e := testutil.MustEnv(t)
	nsR := testutil.MustNetns(t, "uprn")
	_, x := testutil.MustVethPair(t, nsR, nsR)
	_, y := testutil.MustVethPair(t, nsR, nsR)
	dir := t.TempDir()
	obj := filepath.Join(dir, "dropfilter.bpf.o")
	deploy(t, obj, "dropfilter")
	cfgPath := filepath.Join(dir, "bpfsup.toml")
	one := config{object: obj, netns: nsR.Path, attach: []attachment{{"xdp_drop", "xdp:" + x.Name}}}
	one.write(t, cfgPath)
	p := startBpfsup(t, e, "", "-c", cfgPath)
	waitChildren(t, p, 1)
	linkX, _ := linkIDs(t, e, "xdp_drop")

	two := one.with(attachment{"xdp_drop", "xdp:" + y.Name})
	two.write(t, cfgPath)
	e2e.MustRun(t, e, "reload")
	nameX, nameY := "xdp_drop-"+x.Name, "xdp_drop-"+y.Name
	if l, _ := linkIDs(t, e, nameX); l != linkX {
		t.Fatalf("link %s is %d, want the link that was xdp_drop (%d), renamed", nameX, l, linkX)
	}
	if l, _ := linkIDs(t, e, nameY); l == 0 || l == linkX {
		t.Fatalf("link %s is %d, want a new link", nameY, l)
	}
	st := status(t, e, "dropfilter")
	var names []string
	for _, l := range st.Links {
		names = append(names, l.Name+"="+l.Hook)
	}
	want := []string{nameX + "=xdp:" + x.Name, nameY + "=xdp:" + y.Name}
	slices.Sort(names)
	slices.Sort(want)
	if got, want := strings.Join(names, " "), strings.Join(want, " "); got != want {
		t.Fatalf("status links %q, want %q", got, want)
	}
	if !strings.Contains(p.Output(), `msg="link renamed" object=dropfilter from=xdp_drop to=`+nameX) {
		t.Errorf("no log line for the rename:\n%s", p.Output())
	}

	one.write(t, cfgPath)
	e2e.MustRun(t, e, "reload")
	if l, _ := linkIDs(t, e, "xdp_drop"); l != linkX {
		t.Fatalf("back to one attachment: link xdp_drop is %d, want %d", l, linkX)
	}
	if pinstore.Exists(pinPath(e, "links", nameY)) || pinstore.Exists(pinPath(e, "links", nameX)) {
		t.Fatalf("links %s or %s still pinned after going back to one attachment", nameX, nameY)
	}
	if got := len(status(t, e, "dropfilter").Links); got != 1 {
		t.Fatalf("%d links after going back to one attachment, want 1", got)
	}
}

// TestXDPRenameCrash: a crash right after a link pin was renamed, followed
// by a start with the configuration from before (as when the new one is
// reverted): the manifest does not know the new name, yet the link on the
// hook is found under it and renamed back, not refused as someone else's.
func TestXDPRenameCrash(t *testing.T) {
	e := testutil.MustEnv(t)
	nsR := testutil.MustNetns(t, "uprc")
	_, x := testutil.MustVethPair(t, nsR, nsR)
	obj := filepath.Join(t.TempDir(), "dropfilter.bpf.o")
	deploy(t, obj, "dropfilter")
	args := []string{"-o", obj, "-a", "xdp_drop@xdp:" + x.Name, "--netns", nsR.Path}
	p := startBpfsup(t, e, "", args...)
	waitChildren(t, p, 1)
	linkX, _ := linkIDs(t, e, "xdp_drop")
	p.Kill(syscall.SIGKILL)
	p.Wait(t, 10*time.Second)

	// What the crash leaves: the pin moved to the name a second attachment
	// would give it, the manifest as before.
	renamed := pinPath(e, "links", "xdp_drop-"+x.Name)
	if err := os.Rename(pinPath(e, "links", "xdp_drop"), renamed); err != nil {
		t.Fatal(err)
	}
	p = startBpfsup(t, e, "", args...)
	waitChildren(t, p, 1)
	if l, _ := linkIDs(t, e, "xdp_drop"); l != linkX {
		t.Fatalf("link xdp_drop is %d after the start, want the renamed link %d back", l, linkX)
	}
	if pinstore.Exists(renamed) {
		t.Fatalf("%s still pinned", renamed)
	}
}
