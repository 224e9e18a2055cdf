package fdstore

import (
	"errors"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfsup/bpfsup/handoff"
	"github.com/bpfsup/bpfsup/internal/bpffs"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

func TestMain(m *testing.M) {
	os.Exit(testutil.CheckNoFDLeaks(m))
}

func TestParseName(t *testing.T) {
	tests := []struct {
		name          string
		obj, dir, pin string
		next, ok      bool
	}{
		{"fw/maps/counters", "fw", "maps", "counters", false, true},
		{"fw/links/xdp_fw.next", "fw", "links", "xdp_fw", true, true},
		{"fw/programs/p", "fw", "programs", "p", false, true},
		{"fw/staging/p", "", "", "", false, false},
		{"fw/maps", "", "", "", false, false},
		{"/maps/x", "", "", "", false, false},
		{"fw/maps/", "", "", "", false, false},
		{"a/b/maps/x", "", "", "", false, false},
		{"http", "", "", "", false, false},
	}
	for _, tt := range tests {
		obj, dir, pin, next, ok := ParseName(tt.name)
		if obj != tt.obj || dir != tt.dir || pin != tt.pin || next != tt.next || ok != tt.ok {
			t.Errorf("ParseName(%q) = %q, %q, %q, %v, %v; want %q, %q, %q, %v, %v",
				tt.name, obj, dir, pin, next, ok, tt.obj, tt.dir, tt.pin, tt.next, tt.ok)
		}
	}
}

func newMap(t *testing.T) *ebpf.Map {
	t.Helper()
	testutil.RequireRoot(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func mapFile(t *testing.T, m *ebpf.Map) *os.File {
	t.Helper()
	c, err := m.Clone()
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(c.FD()), "map")
	t.Cleanup(func() { f.Close() })
	return f
}

// Split takes what systemd handed back from the store, a BPF object named
// as a pin of its kind, and leaves sockets and anything else misnamed.
func TestSplit(t *testing.T) {
	m := newMap(t)
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	sock, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	files := []handoff.NamedFile{
		{Name: "http", File: sock},
		{Name: "fw/maps/counters", File: mapFile(t, m)},
		{Name: "fw/programs/counters", File: mapFile(t, m)}, // a map where a program belongs
		{Name: "fw/maps/http", File: sock},                  // a socket named as a pin
		{Name: "fw/links/tc_fw", File: mapFile(t, m)},       // a tc filter's record
		{Name: "fw/maps/counters.next", File: mapFile(t, m)},
	}
	stored, rest := Split(files)
	var sn, rn []string
	for _, f := range stored {
		sn = append(sn, f.Name)
	}
	for _, f := range rest {
		rn = append(rn, f.Name)
	}
	if want := []string{"fw/maps/counters", "fw/links/tc_fw", "fw/maps/counters.next"}; !slices.Equal(sn, want) {
		t.Errorf("stored %q, want %q", sn, want)
	}
	if want := []string{"http", "fw/programs/counters", "fw/maps/http"}; !slices.Equal(rn, want) {
		t.Errorf("rest %q, want %q", rn, want)
	}
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	for _, e := range Entries(stored) {
		if e.Info.Kind != bpffs.Map || e.Info.ID != uint32(id) {
			t.Errorf("entry %s: %+v, want map id %d", e.Name, e.Info, id)
		}
	}
}

// Sync stores what is new, replaces through a second name, and removes
// what is no longer wanted; the store holds the objects themselves.
func TestKeeperSync(t *testing.T) {
	m1, m2, m3 := newMap(t), newMap(t), newMap(t)
	entry := func(name string, m *ebpf.Map) Entry {
		kind, err := bpffs.FDKind(m.FD())
		if err != nil {
			t.Fatal(err)
		}
		return Entry{Name: name, FD: m.FD(), Info: bpffs.FDInfo(m.FD(), kind)}
	}
	ln := testutil.ListenNotify(t)
	t.Setenv("NOTIFY_SOCKET", ln.Path)
	n, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	k := NewKeeper(n, []Entry{{Name: "old/maps/gone", Info: bpffs.PinInfo{Kind: bpffs.Map, ID: 1}}})

	check := func(stored, removed, wantStored, wantRemoved int, want []Entry) {
		t.Helper()
		if stored != wantStored || removed != wantRemoved {
			t.Errorf("Sync stored %d and removed %d, want %d and %d", stored, removed, wantStored, wantRemoved)
		}
		var names []string
		for _, e := range want {
			names = append(names, e.Name)
		}
		testutil.WaitFor(t, 5*time.Second, "the store to hold "+names[0]+"...", func() bool {
			return slices.Equal(ln.StoreNames(), names)
		})
		for i, s := range ln.Stored(t) {
			kind, _ := bpffs.FDKind(int(s.File.Fd()))
			if got := bpffs.FDInfo(int(s.File.Fd()), kind); got.ID != want[i].Info.ID {
				t.Errorf("store's %s is id %d, want %d", s.Name, got.ID, want[i].Info.ID)
			}
			s.File.Close()
		}
	}

	want := []Entry{entry("fw/maps/a", m1), entry("fw/maps/b", m2)}
	stored, removed, err := k.Sync(want)
	if err != nil {
		t.Fatal(err)
	}
	check(stored, removed, 2, 1, want)

	// The same again: nothing to send. The listener reads the socket on
	// its own goroutine: the first Sync's last message in first.
	ln.WaitFor(t, "FDNAME=old/maps/gone")
	before := len(ln.Lines())
	if stored, removed, err = k.Sync(want); err != nil || stored+removed != 0 {
		t.Errorf("Sync of what the store holds: stored %d, removed %d, %v", stored, removed, err)
	}

	// a replaced by m3, b dropped.
	want = []Entry{entry("fw/maps/a", m3)}
	if stored, removed, err = k.Sync(want); err != nil {
		t.Fatal(err)
	}
	check(stored, removed, 1, 1, want)
	lines := ln.Lines()[before:]
	wantLines := []string{
		"FDSTORE=1", "FDNAME=fw/maps/a.next", "FDPOLL=0",
		"FDSTOREREMOVE=1", "FDNAME=fw/maps/a",
		"FDSTORE=1", "FDNAME=fw/maps/a", "FDPOLL=0",
		"FDSTOREREMOVE=1", "FDNAME=fw/maps/a.next",
		"FDSTOREREMOVE=1", "FDNAME=fw/maps/b",
	}
	if !slices.Equal(lines, wantLines) {
		t.Errorf("the replacement sent\n%q\nwant\n%q", lines, wantLines)
	}
}

func TestOpenOutsideSystemd(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if _, err := Open(); !errors.Is(err, ErrNoNotifySocket) {
		t.Errorf("Open without NOTIFY_SOCKET: %v, want ErrNoNotifySocket", err)
	}
	t.Setenv("NOTIFY_SOCKET", "vsock:2:1234")
	if _, err := Open(); err == nil {
		t.Error("Open of a vsock NOTIFY_SOCKET: no error; it cannot carry fds")
	}
}
