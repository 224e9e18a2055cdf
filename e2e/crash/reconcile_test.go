package crashtest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/bpfsup/bpfsup/hooks"
	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
	"github.com/bpfsup/bpfsup/pinstore"
)

// TestReconcileOnStart starts bpfsup over what an earlier run (killed with
// SIGKILL) left, changed in one way each, and checks that it converges to
// the configuration.
func TestReconcileOnStart(t *testing.T) {
	n := newNetRig(t)
	for _, tt := range []struct {
		name string
		// change alters what the killed run left; nil starts from nothing.
		change func(t *testing.T, r *rig, st state)
		// adopted is how many programs the start must adopt without
		// loading them (-1: not checked).
		adopted int
		// sameLink says the link must be the one the earlier run made.
		sameLink bool
		// refused says the start must be refused: the manifest no longer
		// records the maps, which are then not bpfsup's to adopt.
		refused bool
	}{
		{name: "nothing-pinned", adopted: 0},
		{name: "everything-pinned", change: func(*testing.T, *rig, state) {}, adopted: 2, sameLink: true},
		{name: "program-pin-deleted", adopted: 1, sameLink: true, change: func(t *testing.T, r *rig, st state) {
			remove(t, r.pinPath("programs", "xdp_drop"))
		}},
		{name: "map-pin-deleted", adopted: 0, sameLink: true, change: func(t *testing.T, r *rig, st state) {
			// The programs use the old drop_count: both are loaded anew
			// with the new one.
			remove(t, r.pinPath("maps", "drop_count"))
		}},
		{name: "link-pin-deleted", adopted: 2, change: func(t *testing.T, r *rig, st state) {
			remove(t, r.pinPath("links", "xdp_drop"))
		}},
		{name: "only-maps-pinned", adopted: 0, change: func(t *testing.T, r *rig, st state) {
			remove(t, r.pinPath("links", "xdp_drop"))
			remove(t, r.pinPath("programs", "xdp_drop"))
			remove(t, r.pinPath("programs", "tc_drop"))
		}},
		{name: "staging-debris", adopted: 2, sameLink: true, change: func(t *testing.T, r *rig, st state) {
			// Opened by id: cilium/ebpf's Pin moves a pin the object was
			// loaded from, and the originals must stay.
			m, err := ebpf.NewMapFromID(ebpf.MapID(st.maps["drop_count"]))
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if err := m.Pin(r.pinPath("staging", "maps-drop_count")); err != nil {
				t.Fatal(err)
			}
			p, err := ebpf.NewProgramFromID(ebpf.ProgramID(st.progs["tc_drop"]))
			if err != nil {
				t.Fatal(err)
			}
			defer p.Close()
			if err := p.Pin(r.pinPath("staging", "programs-tc_drop")); err != nil {
				t.Fatal(err)
			}
			if err := m.Pin(r.pinPath("staging", "junk")); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "link-left-in-staging", adopted: 2, sameLink: true, change: func(t *testing.T, r *rig, st state) {
			// A crash between pinning a link in staging and moving it: the
			// staged link is attached and must be moved into place, not
			// removed (which would leave the hook empty).
			if err := os.Rename(r.pinPath("links", "xdp_drop"), r.pinPath("staging", "links-xdp_drop")); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "stale-lock", adopted: 2, sameLink: true, change: func(t *testing.T, r *rig, st state) {
			// The lock file of a supervisor that is gone: a pid nobody has
			// and no flock held.
			lock := filepath.Join(r.env.StateDir, objName+".lock")
			if err := os.WriteFile(lock, []byte("2147483646\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "manifest-with-wrong-ids", refused: true, change: func(t *testing.T, r *rig, st state) {
			editManifest(t, r, func(m *pinstore.Manifest) {
				for name, rec := range m.Maps {
					rec.ID += 100000
					m.Maps[name] = rec
				}
				for name, rec := range m.Programs {
					rec.ID, rec.PreviousIDs = rec.ID+100000, []uint32{rec.ID + 200000}
					m.Programs[name] = rec
				}
				for name, rec := range m.Links {
					rec.ID += 100000
					m.Links[name] = rec
				}
				m.Generation = 42
			})
		}},
		{name: "manifest-unreadable", refused: true, change: func(t *testing.T, r *rig, st state) {
			if err := os.WriteFile(filepath.Join(r.env.StateDir, objName+".json"), []byte("{\"version\": 1, \"maps\": [tru"), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "manifest-missing", refused: true, change: func(t *testing.T, r *rig, st state) {
			remove(t, filepath.Join(r.env.StateDir, objName+".json"))
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, n)
			r.seedDropPorts(t)
			var st state
			if tt.change != nil {
				p := r.startReady(t)
				r.setDropCount(t, seededCount)
				st = r.checkConverged(t)
				kill(t, p)
				tt.change(t, r, st)
			}
			if tt.refused {
				// Nothing changes: the filter the killed run left keeps
				// filtering, with its maps.
				out := r.runExpectFailure(t)
				e2e.WantAll(t, out, "foreign pin", "--force", r.pinPath("maps", "drop_ports"), r.pinPath("maps", "drop_count"))
				info := e2e.PinnedLinkInfo(t, r.pinPath("links", "xdp_drop"))
				if uint32(info.ID) != st.link || r.progID(t) != st.progs["xdp_drop"] {
					t.Errorf("after the refusal: link %d, %s runs program %d; want the killed run's link %d running %d",
						info.ID, r.ifB.Name, r.progID(t), st.link, st.progs["xdp_drop"])
				}
				for name, id := range st.maps {
					if got := uint32(e2e.PinnedMapID(t, r.pinPath("maps", name))); got != id {
						t.Errorf("after the refusal %s holds map %d, want the killed run's %d", name, got, id)
					}
				}
				n.traffic.waitPassing(t)
				return
			}
			p := r.startReady(t)
			got := r.checkConverged(t)
			if adopted, _ := e2e.InstallCounts(t, p.Output(), objName); tt.adopted >= 0 && adopted != tt.adopted {
				t.Errorf("adopted %d programs, want %d", adopted, tt.adopted)
			}
			if tt.sameLink && got.link != st.link {
				t.Errorf("link is %d, want the earlier run's %d", got.link, st.link)
			}
			c := r.contents(t)
			if !slices.Equal(c.ports, r.wantPorts()) {
				t.Errorf("drop_ports holds %v, want %v", c.ports, r.wantPorts())
			}
			if tt.change != nil && tt.name != "map-pin-deleted" && c.count < seededCount {
				t.Errorf("drop_count is %d, was at least %d", c.count, seededCount)
			}
			n.traffic.waitPassing(t)
			stop(t, p)
		})
	}
}

func remove(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

func editManifest(t *testing.T, r *rig, edit func(*pinstore.Manifest)) {
	t.Helper()
	path := filepath.Join(r.env.StateDir, objName+".json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m pinstore.Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	edit(&m)
	data, err = json.MarshalIndent(&m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestStagedLinkKeepsHook checks the recovery of a link left in staging with
// the hook sampled: the hook must not go empty while bpfsup restarts.
func TestStagedLinkKeepsHook(t *testing.T) {
	n := newNetRig(t)
	r := newRig(t, n)
	s := n.startSampler(t, r.linkPins()...)
	r.seedDropPorts(t)
	p := r.startReady(t)
	before := r.checkConverged(t)
	kill(t, p)
	if err := os.Rename(r.pinPath("links", "xdp_drop"), r.pinPath("staging", "links-xdp_drop")); err != nil {
		t.Fatal(err)
	}
	l, err := link.LoadPinnedLink(r.pinPath("staging", "links-xdp_drop"), nil)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	p = r.startReady(t)
	after := r.checkConverged(t)
	if after.link != before.link {
		t.Errorf("link is %d, want the staged %d moved into place", after.link, before.link)
	}
	n.traffic.waitPassing(t)
	s.check(t)
	if strings.Contains(p.Output(), "level=ERROR") {
		t.Errorf("errors in the log:\n%s", p.Output())
	}
	stop(t, p)
}

// TestStagedReplacementWins: a crash between pinning a replacement link in
// staging and moving it into place leaves two links attached, the old one at
// the pin and the new one in staging. The next start moves the new one over
// the old one (the crash's rename, completed) and must then go on with the
// new one: not with the old one, which bpfsup must not have opened before
// the move (it opens pins ahead of time while the object parses). Netfilter,
// where make-before-break puts the replacement one priority away, is the
// hook that takes one program twice.
func TestStagedReplacementWins(t *testing.T) {
	testutil.SkipWithout(t, testutil.NetfilterLink)
	e := testutil.MustEnv(t)
	ns := testutil.MustNetns(t, "staged")
	args := []string{"-o", testutil.BPFObject("hooks"), "-a", "nf_count@netfilter:ipv4/local_in/-100",
		"--netns", ns.Path, "--restart", "never", "--", "true"}
	if out, code := e.Run(t, "run", args...); code != 0 {
		t.Fatalf("first run: exit %d\n%s", code, out)
	}
	objDir := filepath.Join(e.PinRoot, "hooks")
	names, err := os.ReadDir(filepath.Join(objDir, "links"))
	if err != nil || len(names) != 1 {
		t.Fatalf("links after the first run: %v, %v; want one", names, err)
	}
	name := names[0].Name()
	pin := filepath.Join(objDir, "links", name)
	oldInfo := e2e.PinnedLinkInfo(t, pin)

	// The replacement a crashed install had attached and staged.
	prog, err := ebpf.LoadPinnedProgram(filepath.Join(objDir, "programs", "nf_count"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	var repl link.Link
	err = hooks.InNetns(ns.Path, func() (err error) {
		repl, err = link.AttachNetfilter(link.NetfilterOptions{Program: prog,
			ProtocolFamily: link.NetfilterProtoIPv4, Hook: link.NetfilterInetLocalIn, Priority: -99})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer repl.Close()
	if err := repl.Pin(filepath.Join(objDir, "staging", "links-"+name)); err != nil {
		t.Fatal(err)
	}
	replInfo, err := repl.Info()
	if err != nil {
		t.Fatal(err)
	}

	out, code := e.Run(t, "run", args...)
	if code != 0 {
		t.Fatalf("second run: exit %d\n%s", code, out)
	}
	m, err := pinstore.Store{Root: e.PinRoot, StateDir: e.StateDir}.ReadManifest("hooks")
	if err != nil || m == nil {
		t.Fatalf("manifest: %v, %v", m, err)
	}
	info := e2e.PinnedLinkInfo(t, pin)
	// The staged link went into place; install found it one priority away
	// from the configuration and replaced it (make-before-break), or kept
	// it: either way the pin and the manifest name the same link, and it is
	// not the old one.
	if info.ID == oldInfo.ID {
		t.Errorf("pinned link is the old one, %d; the staged %d should have replaced it", oldInfo.ID, replInfo.ID)
	}
	if got := m.Links[name].ID; got != uint32(info.ID) {
		t.Errorf("manifest records link %d, the pin holds %d (old %d, staged %d)\n%s", got, info.ID, oldInfo.ID, replInfo.ID, out)
	}
}
