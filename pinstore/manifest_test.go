package pinstore

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// Manifests need no bpffs: these tests run unprivileged too.
func TestManifestRoundTrip(t *testing.T) {
	s := mustPlainStore(t)
	o := mustOpen(t, s, "fw")

	if m, err := s.ReadManifest("fw"); m != nil || err != nil {
		t.Fatalf("ReadManifest before any write = %+v, %v; want nil, nil", m, err)
	}

	started := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	want := &Manifest{
		Source:       "/etc/bpfsup/fw.bpf.o",
		ObjectSHA256: strings.Repeat("ab", 32),
		ConfigHash:   "c0ffee",
		Generation:   3,
		Maps: map[string]MapRecord{
			"drop_ports": {ID: 11, Path: filepath.Join(s.Root, "fw", "maps", "drop_ports")},
			"shared":     {ID: 12, Path: "/sys/fs/bpf/shared/counters"},
		},
		Programs: map[string]ProgramRecord{
			"xdp_drop": {ID: 21, Tag: "0123456789abcdef", Type: "XDP", PreviousIDs: []uint32{7, 9}},
		},
		Links: map[string]LinkRecord{
			"xdp_drop": {ID: 31, Program: "xdp_drop", Hook: "xdp:veth0", Netns: "/run/netns/blue",
				Mechanism: "bpf_link xdp", Updatable: true, PreviousIDs: []uint32{30}},
		},
		Supervisor: &SupervisorRecord{PID: 4242, Version: "v0.1.0", Started: started, ChildPID: 4243, Restarts: 2},
	}
	before := time.Now().UTC()
	if err := o.WriteManifest(want); err != nil {
		t.Fatal(err)
	}
	if want.Version != ManifestVersion || want.Object != "fw" || want.PinRoot != s.RootDir() || want.Updated.Before(before) {
		t.Fatalf("WriteManifest did not fill in version, object, pin root and time: %+v", want)
	}

	got, err := s.ReadManifest("fw")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("read back\n%+v\nwant\n%+v", got, want)
	}
	wantMode(t, s.ManifestPath("fw"), 0o600)

	// Rewriting replaces the file and leaves no temporary files behind.
	want.Generation = 4
	if err := o.WriteManifest(want); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.ReadManifest("fw"); got == nil || got.Generation != 4 {
		t.Fatalf("after rewrite: %+v", got)
	}
	entries, err := os.ReadDir(s.StateDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"fw.json", "fw.lock"}) {
		t.Fatalf("state directory holds %v, want fw.json and fw.lock", names)
	}
}

// A manifest written for the same object name under another pin root is
// not this store's.
func TestManifestOtherPinRoot(t *testing.T) {
	s := mustPlainStore(t)
	o := mustOpen(t, s, "fw")
	if err := o.WriteManifest(&Manifest{Generation: 1}); err != nil {
		t.Fatal(err)
	}
	other := Store{Root: t.TempDir(), StateDir: s.StateDir}
	if m, err := other.ReadManifest("fw"); m != nil || err != nil {
		t.Fatalf("ReadManifest under another pin root = %+v, %v; want nil, nil", m, err)
	}
	// The same root spelled differently is the same root.
	same := Store{Root: s.Root + "/", StateDir: s.StateDir + "/"}
	if m, err := same.ReadManifest("fw"); m == nil || err != nil || m.Generation != 1 {
		t.Fatalf("ReadManifest with the root spelled %q = %+v, %v", same.Root, m, err)
	}
}

func TestManifestCorrupt(t *testing.T) {
	s := mustPlainStore(t)
	if err := os.WriteFile(s.ManifestPath("fw"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := s.ReadManifest("fw")
	if m != nil || err == nil || !strings.Contains(err.Error(), s.ManifestPath("fw")) {
		t.Fatalf("ReadManifest of a corrupt file = %+v, %v; want an error naming the file", m, err)
	}
}

// A manifest that says what the one on record says is not written again; one
// that differs in anything but its time is.
func TestWriteManifestUnlessSame(t *testing.T) {
	s := mustPlainStore(t)
	o := mustOpen(t, s, "fw")
	m := &Manifest{Source: "/x.bpf.o", Generation: 1,
		Maps:     map[string]MapRecord{"m": {ID: 1, Path: "/p"}},
		Programs: map[string]ProgramRecord{"p": {ID: 2, Tag: "t", Type: "XDP"}},
		Links:    map[string]LinkRecord{"p": {ID: 3, Program: "p", Hook: "xdp:veth0"}}}
	if wrote, err := o.WriteManifestUnlessSame(m, nil); err != nil || !wrote {
		t.Fatalf("first write: wrote %v, %v", wrote, err)
	}
	old, err := s.ReadManifest("fw")
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(s.ManifestPath("fw"))
	if err != nil {
		t.Fatal(err)
	}

	same := &Manifest{Source: "/x.bpf.o", Generation: 1,
		Maps:     map[string]MapRecord{"m": {ID: 1, Path: "/p"}},
		Programs: map[string]ProgramRecord{"p": {ID: 2, Tag: "t", Type: "XDP"}},
		Links:    map[string]LinkRecord{"p": {ID: 3, Program: "p", Hook: "xdp:veth0"}}}
	if wrote, err := o.WriteManifestUnlessSame(same, old); err != nil || wrote {
		t.Fatalf("same manifest: wrote %v, %v; want no write", wrote, err)
	}
	if st2, err := os.Stat(s.ManifestPath("fw")); err != nil || !os.SameFile(st, st2) {
		t.Fatalf("same manifest: the file was replaced (%v)", err)
	}
	if !same.Updated.Equal(old.Updated) || same.PinRoot != old.PinRoot {
		t.Errorf("same manifest: not filled in from the one on record: %+v", same)
	}

	changed := *same
	changed.Links = map[string]LinkRecord{"p": {ID: 4, Program: "p", Hook: "xdp:veth0"}}
	if wrote, err := o.WriteManifestUnlessSame(&changed, old); err != nil || !wrote {
		t.Fatalf("changed link id: wrote %v, %v; want a write", wrote, err)
	}
	if got, _ := s.ReadManifest("fw"); got == nil || got.Links["p"].ID != 4 {
		t.Fatalf("after the write: %+v", got)
	}
}

// TestOpenRead: OpenRead returns the manifest Open reads under the lock,
// nil for one it cannot decode, and refuses, as Open does, one that names
// another pin root, also when a field of it does not decode: nothing is
// made then.
func TestOpenRead(t *testing.T) {
	s := mustPlainStore(t)
	o := mustOpen(t, s, "fw")
	if err := o.WriteManifest(&Manifest{Generation: 7}); err != nil {
		t.Fatal(err)
	}
	o.Close()
	o, m, err := s.OpenRead("fw")
	if err != nil || m == nil || m.Generation != 7 {
		t.Fatalf("OpenRead = %+v, %v; want the manifest of generation 7", m, err)
	}
	o.Close()

	if err := os.WriteFile(s.ManifestPath("fw"), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	o, m, err = s.OpenRead("fw")
	if err != nil || m != nil {
		t.Fatalf("OpenRead of a corrupt manifest = %+v, %v; want no manifest and the object open", m, err)
	}
	o.Close()

	for _, doc := range []string{
		`{"version": 1, "object": "gw", "pin_root": "/sys/fs/bpf/elsewhere", "generation": 3}`,
		`{"version": 1, "object": "gw", "pin_root": "/sys/fs/bpf/elsewhere", "generation": "three"}`,
	} {
		if err := os.WriteFile(s.ManifestPath("gw"), []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		if o, m, err := s.OpenRead("gw"); !errors.Is(err, ErrOtherPinRoot) || m != nil {
			if o != nil {
				o.Close()
			}
			t.Fatalf("OpenRead of %s = %+v, %v; want ErrOtherPinRoot", doc, m, err)
		}
		if _, err := os.Lstat(s.ObjectDir("gw")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a refused OpenRead made %s: %v", s.ObjectDir("gw"), err)
		}
	}
}
