package pinstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// mustStore is a private pin root on bpffs and a private state directory.
func mustStore(tb testing.TB) Store {
	tb.Helper()
	testutil.RequireRoot(tb)
	return Store{Root: testutil.MustPinRoot(tb), StateDir: testutil.MustStateDir(tb)}
}

// mustArray creates a small array map, closed when the test ends.
func mustArray(tb testing.TB) *ebpf.Map {
	tb.Helper()
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		tb.Fatalf("create map: %v", err)
	}
	tb.Cleanup(func() { m.Close() })
	return m
}

func mapID(tb testing.TB, m *ebpf.Map) ebpf.MapID {
	tb.Helper()
	info, err := m.Info()
	if err != nil {
		tb.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		tb.Fatal("map info has no id")
	}
	return id
}

// pinnedMapID is the id of the map pinned at path.
func pinnedMapID(tb testing.TB, path string) ebpf.MapID {
	tb.Helper()
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		tb.Fatalf("load pinned map: %v", err)
	}
	defer m.Close()
	return mapID(tb, m)
}

func wantMode(tb testing.TB, path string, want os.FileMode) {
	tb.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		tb.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		tb.Errorf("%s has mode %#o, want %#o", path, got, want)
	}
}

func wantEmptyDir(tb testing.TB, dir string) {
	tb.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatal(err)
	}
	if len(entries) != 0 {
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		tb.Fatalf("%s holds %v, want nothing", dir, names)
	}
}

func TestOpenLayout(t *testing.T) {
	s := mustStore(t)
	o := mustOpen(t, s, "fw")
	if o.Name != "fw" || o.Dir != filepath.Join(s.Root, "fw") || o.Dir != s.ObjectDir("fw") || o.Store() != s {
		t.Fatalf("object %+v in store %+v", o, s)
	}
	wantMode(t, o.Dir, 0o700)
	for _, d := range []string{"maps", "programs", "links", "staging"} {
		wantMode(t, filepath.Join(o.Dir, d), 0o700)
	}
	for kind, want := range map[Kind]string{
		Maps:     filepath.Join(s.Root, "fw", "maps", "counters"),
		Programs: filepath.Join(s.Root, "fw", "programs", "counters"),
		Links:    filepath.Join(s.Root, "fw", "links", "counters"),
	} {
		if got := o.Path(kind, "counters"); got != want {
			t.Errorf("Path(%s) = %s, want %s", kind, got, want)
		}
	}
	if got := o.MapPath("counters", MapPolicy{PinPath: "/elsewhere/c"}); got != "/elsewhere/c" {
		t.Errorf("MapPath with PinPath = %s", got)
	}
	wantMode(t, s.LockPath("fw"), 0o600)

	mustOpen(t, s, "dns")
	// A directory with a name bpfsup would refuse is not an object.
	if err := os.Mkdir(filepath.Join(s.Root, "odd-dir_x"), 0o700); err != nil {
		t.Fatal(err)
	}
	objs, err := s.Objects()
	if err != nil || !slices.Equal(objs, []string{"dns", "fw", "odd-dir_x"}) {
		t.Fatalf("Objects() = %v, %v", objs, err)
	}
	if objs, err := (Store{Root: filepath.Join(s.Root, "none")}).Objects(); err != nil || objs != nil {
		t.Fatalf("Objects() of a missing root = %v, %v", objs, err)
	}

	_, err = s.Open("fw.bpf")
	if !errors.Is(err, ErrBadName) || !strings.Contains(err.Error(), "object name") {
		t.Fatalf("Open(fw.bpf) = %v, want ErrBadName", err)
	}
	if Exists(s.LockPath("fw.bpf")) || Exists(filepath.Join(s.Root, "fw.bpf")) {
		t.Fatal("a refused name left files behind")
	}
}

func TestStoreDefaults(t *testing.T) {
	var s Store
	if s.RootDir() != DefaultPinRoot || s.StateDirectory() != DefaultStateDir {
		t.Fatalf("defaults %s, %s", s.RootDir(), s.StateDirectory())
	}
	if got := s.LockPath("fw"); got != "/run/bpfsup/fw.lock" {
		t.Errorf("LockPath = %s", got)
	}
	if got := s.ManifestPath("fw"); got != "/run/bpfsup/fw.json" {
		t.Errorf("ManifestPath = %s", got)
	}
	s = Store{Root: "/sys/fs/bpf/x/", StateDir: "/tmp/s/"}
	if s.RootDir() != "/sys/fs/bpf/x" || s.ObjectDir("fw") != "/sys/fs/bpf/x/fw" || s.StateDirectory() != "/tmp/s" {
		t.Errorf("unclean paths not cleaned: %s %s %s", s.RootDir(), s.ObjectDir("fw"), s.StateDirectory())
	}
}

// Pin replaces an existing pin in one step: a reader looking at the path the
// whole time never finds it missing, and no staging debris is left.
func TestPinReplacesAtomically(t *testing.T) {
	s := mustStore(t)
	o := mustOpen(t, s, "fw")
	m1, m2 := mustArray(t), mustArray(t)
	id1, id2 := mapID(t, m1), mapID(t, m2)
	target := o.Path(Maps, "m")

	if err := o.Pin(Maps, target, m1); err != nil {
		t.Fatal(err)
	}
	if got := pinnedMapID(t, target); got != id1 {
		t.Fatalf("pinned map %d, want %d", got, id1)
	}
	wantMode(t, target, 0o600)

	var (
		stop     atomic.Bool
		misses   atomic.Int64
		readErr  error
		readerWG sync.WaitGroup
	)
	readerWG.Add(1)
	go func() {
		defer readerWG.Done()
		for !stop.Load() {
			m, err := ebpf.LoadPinnedMap(target, nil)
			if errors.Is(err, os.ErrNotExist) {
				misses.Add(1)
				continue
			}
			if err != nil {
				readErr = err
				return
			}
			m.Close()
		}
	}()
	const rounds = 200
	for i := range rounds {
		m := m2
		if i%2 == 1 {
			m = m1
		}
		if err := o.Pin(Maps, target, m); err != nil {
			stop.Store(true)
			readerWG.Wait()
			t.Fatalf("round %d: %v", i, err)
		}
	}
	stop.Store(true)
	readerWG.Wait()
	if readErr != nil {
		t.Fatalf("reader: %v", readErr)
	}
	if n := misses.Load(); n != 0 {
		t.Fatalf("the pin was missing %d times while it was replaced", n)
	}
	want := id2
	if rounds%2 == 0 {
		want = id1
	}
	if got := pinnedMapID(t, target); got != want {
		t.Fatalf("pinned map %d after the last replacement, want %d", got, want)
	}
	wantMode(t, target, 0o600)
	wantEmptyDir(t, filepath.Join(o.Dir, "staging"))
	if pins, err := o.Pins(Maps); err != nil || !slices.Equal(pins, []string{"m"}) {
		t.Fatalf("Pins(Maps) = %v, %v", pins, err)
	}
}

// A map with its own pin path is staged beside it (a rename cannot leave one
// bpffs instance) and leaves nothing there either.
func TestPinOutsideObject(t *testing.T) {
	s := mustStore(t)
	o := mustOpen(t, s, "fw")
	m1, m2 := mustArray(t), mustArray(t)
	shared := filepath.Join(s.Root, "shared")
	target := filepath.Join(shared, "counters")

	for _, m := range []*ebpf.Map{m1, m2} {
		if err := o.Pin(Maps, target, m); err != nil {
			t.Fatal(err)
		}
		if got, want := pinnedMapID(t, target), mapID(t, m); got != want {
			t.Fatalf("pinned map %d, want %d", got, want)
		}
	}
	wantMode(t, shared, 0o700)
	wantMode(t, target, 0o600)
	if entries, _ := os.ReadDir(shared); len(entries) != 1 {
		t.Fatalf("%s holds %d entries, want the pin alone", shared, len(entries))
	}
	wantEmptyDir(t, filepath.Join(o.Dir, "staging"))

	// Debris of a crash beside the pin goes when the manifest says it is
	// bpfsup's (a map this one replaced); anything else there stays.
	debris := filepath.Join(shared, "bpfsup-staging-counters")
	if err := m1.Pin(debris); err != nil {
		t.Fatal(err)
	}
	man := &Manifest{Maps: map[string]MapRecord{"counters": {ID: uint32(mapID(t, m2)), Path: target, Made: true}}}
	left, err := o.ClearStaging(man, false)
	if err != nil {
		t.Fatal(err)
	}
	if !Exists(debris) || len(left) != 1 || left[0].Path != debris {
		t.Fatalf("ClearStaging with a manifest that does not record map %d: left %v, debris exists %v; want it left alone and reported", mapID(t, m1), left, Exists(debris))
	}
	man.Maps["counters"] = MapRecord{ID: uint32(mapID(t, m2)), Path: target, PreviousIDs: []uint32{uint32(mapID(t, m1))}, Made: true}
	if left, err := o.ClearStaging(man, false); err != nil || len(left) != 0 {
		t.Fatalf("ClearStaging = %v, %v", left, err)
	}
	if Exists(debris) || !Exists(target) {
		t.Fatalf("after ClearStaging: debris exists %v, pin exists %v", Exists(debris), Exists(target))
	}
}

// A supervisor killed between staging a pin and moving it into place leaves
// the staged pin; the next Open removes it, since the write-ahead manifest
// records it, and leaves the real pins alone, and whatever else is in
// staging that bpfsup did not make.
func TestOpenRemovesStagingDebris(t *testing.T) {
	s := mustStore(t)
	o := mustOpen(t, s, "fw")
	kept := mustArray(t)
	if err := o.Pin(Maps, o.Path(Maps, "kept"), kept); err != nil {
		t.Fatal(err)
	}
	o.Close()

	cmd := helperCmd(t, "pin-crash", s, "fw")
	cmd.Env = append(cmd.Env, "BPFSUP_TEST_CRASH_AT=maps/staged")
	p := testutil.StartProc(t, cmd)
	if code := p.Wait(t, 10*time.Second); code != 128+9 {
		t.Fatalf("helper exited with %d, want death by SIGKILL at maps/staged:\n%s", code, p.Output())
	}
	staging := filepath.Join(s.ObjectDir("fw"), "staging")
	entries, err := os.ReadDir(staging)
	if err != nil || len(entries) != 1 || entries[0].Name() != "maps-crashed" {
		t.Fatalf("staging after the crash holds %v (%v), want maps-crashed", entries, err)
	}
	if Exists(filepath.Join(s.ObjectDir("fw"), "maps", "crashed")) {
		t.Fatal("the crashed pin reached its place")
	}
	// Beside the debris, what another tool put in staging: a map of the
	// same name pattern that no manifest records, and a directory.
	intruder := filepath.Join(staging, "maps-intruder")
	if err := mustArray(t).Pin(intruder); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(staging, "notes"), 0o700); err != nil {
		t.Fatal(err)
	}

	o = mustOpen(t, s, "fw")
	if Exists(filepath.Join(staging, "maps-crashed")) {
		t.Error("Open left the crashed pin, which the manifest records, in staging")
	}
	if !Exists(intruder) || !Exists(filepath.Join(staging, "notes")) {
		t.Error("Open removed what bpfsup did not put in staging")
	}
	if got, want := pinnedMapID(t, o.Path(Maps, "kept")), mapID(t, kept); got != want {
		t.Fatalf("kept pin holds map %d, want %d", got, want)
	}
	if pins, _ := o.Pins(Maps); !slices.Equal(pins, []string{"kept"}) {
		t.Fatalf("Pins(Maps) = %v", pins)
	}
}

// A foreign pin that a start with --force moved aside (AsidePath) and did
// not get to replace, because it died, goes back to its place at the next
// start. When bpfsup's own pin holds the place by then, the foreign one
// stays aside and is listed, unless force is set again. A name under
// "foreign-" that bpfsup does not give is left alone.
func TestClearStagingForeignAside(t *testing.T) {
	s := mustStore(t)
	o := mustOpen(t, s, "fw")
	defer o.Close()
	theirs, ours := mustArray(t), mustArray(t)
	place := o.Path(Maps, "shared")
	aside, err := o.AsidePath(place)
	if err != nil {
		t.Fatal(err)
	}
	if err := theirs.Pin(aside); err != nil {
		t.Fatal(err)
	}
	odd := filepath.Join(s.ObjectDir("fw"), "staging", "foreign-notes")
	if err := os.Mkdir(odd, 0o700); err != nil {
		t.Fatal(err)
	}

	left, err := o.ClearStaging(nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := pinnedMapID(t, place), mapID(t, theirs); got != want || Exists(aside) {
		t.Fatalf("%s holds map %d, want the foreign %d put back from %s (still there: %v)", place, got, want, aside, Exists(aside))
	}
	if len(left) != 1 || left[0].Path != odd || !Exists(odd) {
		t.Fatalf("left %v, want only %s, kept", left, odd)
	}

	// Moved aside again, and bpfsup's own pin took the place.
	if err := os.Rename(place, aside); err != nil {
		t.Fatal(err)
	}
	if err := o.Pin(Maps, place, ours); err != nil {
		t.Fatal(err)
	}
	left, err = o.ClearStaging(nil, false)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := pinnedMapID(t, aside), mapID(t, theirs); got != want {
		t.Fatalf("without force, %s holds map %d, want the foreign %d kept aside", aside, got, want)
	}
	if len(left) != 2 || !strings.Contains(fmt.Sprint(left), "did not finish") {
		t.Fatalf("left %v, want the foreign pin aside listed, and %s", left, odd)
	}
	if _, err := o.ClearStaging(nil, true); err != nil {
		t.Fatal(err)
	}
	if Exists(aside) || pinnedMapID(t, place) != mapID(t, ours) || !Exists(odd) {
		t.Fatalf("with force: aside %v (want gone), %s holds %d (want bpfsup's %d), %s kept %v",
			Exists(aside), place, pinnedMapID(t, place), mapID(t, ours), odd, Exists(odd))
	}
}
