package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

func TestMain(m *testing.M) {
	os.Exit(testutil.CheckNoFDLeaks(m))
}

func TestPIDs(t *testing.T) {
	out := "time=1 level=INFO msg=\"child started\" pid=12 argv=x\n" +
		"child pid=40 map=counters map_id=3\n" +
		"time=2 level=INFO msg=\"child started\" pid=345\n"
	if got := PIDs(ChildStartedRE, out); !slices.Equal(got, []int{12, 345}) {
		t.Errorf("PIDs(ChildStartedRE) = %v, want [12 345]", got)
	}
	if got := PIDs(regexp.MustCompile(`(?m)^child pid=(\d+)`), out); !slices.Equal(got, []int{40}) {
		t.Errorf("PIDs(child pid=) = %v, want [40]", got)
	}
	if got := PIDs(ChildStartedRE, "nothing here"); got != nil {
		t.Errorf("PIDs of no announcement = %v, want none", got)
	}
}

func TestInstallCounts(t *testing.T) {
	out := `time=1 level=INFO msg="object ready" object=fw maps=2 programs=2 links=1 adopted=0 loaded=2 generation=0
time=2 level=INFO msg="object ready" object=counter maps=1 programs=2 links=1 adopted=2 loaded=0 generation=0
time=3 level=INFO msg="object ready" object=fw maps=2 programs=2 links=1 adopted=2 loaded=0 generation=1
`
	for _, tc := range []struct {
		object          string
		adopted, loaded int
	}{
		{"fw", 0, 2}, // the first install of fw
		{"counter", 2, 0},
	} {
		if a, l := InstallCounts(t, out, tc.object); a != tc.adopted || l != tc.loaded {
			t.Errorf("InstallCounts(%s) = %d, %d; want %d, %d", tc.object, a, l, tc.adopted, tc.loaded)
		}
	}
}

func TestDirAndTreeEntries(t *testing.T) {
	dir := t.TempDir()
	for _, p := range []string{"b/y", "a", "b/x/z"} {
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(p)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, p), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if got := DirEntries(t, dir); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("DirEntries = %q", got)
	}
	if got := TreeEntries(t, dir); !slices.Equal(got, []string{"a", "b", "b/x", "b/x/z", "b/y"}) {
		t.Errorf("TreeEntries = %q", got)
	}
	missing := filepath.Join(dir, "missing")
	if got := DirEntries(t, missing); got != nil {
		t.Errorf("DirEntries of a missing directory = %q", got)
	}
	if got := TreeEntries(t, missing); got != nil {
		t.Errorf("TreeEntries of a missing directory = %q", got)
	}
}

func TestPutObject(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "dropfilter.bpf.o")
	for _, name := range []string{"dropfilter", "dropfilter_v2"} {
		PutObject(t, dst, name)
		got, err := os.ReadFile(dst)
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(testutil.BPFObject(name))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("after PutObject(%s) the file holds something else", name)
		}
	}
	if entries := DirEntries(t, filepath.Dir(dst)); !slices.Equal(entries, []string{"dropfilter.bpf.o"}) {
		t.Errorf("PutObject left %q", entries)
	}
}

func TestWriteConfig(t *testing.T) {
	path := WriteConfig(t, "pin_root = \"/sys/fs/bpf/x\"\n")
	if data, err := os.ReadFile(path); err != nil || string(data) != "pin_root = \"/sys/fs/bpf/x\"\n" {
		t.Fatalf("config %s holds %q (%v)", path, data, err)
	}
}
