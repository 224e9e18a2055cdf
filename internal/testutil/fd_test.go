package testutil

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestFDSnapshotLeaked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leak")
	before, err := SnapshotFDs()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	after, err := SnapshotFDs()
	if err != nil {
		t.Fatal(err)
	}
	want := []OpenFD{{FD: int(f.Fd()), Target: path}}
	if leaked := before.Leaked(after); !slices.Equal(leaked, want) {
		t.Fatalf("leaked %v, want %v", leaked, want)
	}

	f.Close()
	after, err = SnapshotFDs()
	if err != nil {
		t.Fatal(err)
	}
	if leaked := before.Leaked(after); len(leaked) != 0 {
		t.Fatalf("leaked %v after close", leaked)
	}
}

func TestFDSnapshotLeakedReusedNumber(t *testing.T) {
	before := FDSnapshot{0: "/dev/null", 3: "anon_inode:[eventpoll]", 7: "/tmp/a"}
	after := FDSnapshot{0: "/dev/null", 3: "anon_inode:[eventpoll]", 7: "anon_inode:bpf-map", 9: "socket:[1]"}
	want := []OpenFD{{7, "anon_inode:bpf-map"}, {9, "socket:[1]"}}
	if leaked := before.Leaked(after); !slices.Equal(leaked, want) {
		t.Fatalf("leaked %v, want %v", leaked, want)
	}
	// Closing is not leaking.
	if leaked := after.Leaked(FDSnapshot{0: "/dev/null"}); len(leaked) != 0 {
		t.Fatalf("leaked %v", leaked)
	}
}

func TestFDCount(t *testing.T) {
	n, err := FDCount()
	if err != nil || n < 3 {
		t.Fatalf("FDCount = %d, %v", n, err)
	}
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if m, _ := FDCount(); m != n+1 {
		t.Fatalf("FDCount = %d after opening a file, %d before", m, n)
	}
}

func TestCheckNoFDLeaksCatchesLeak(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leaked")
	var leaked *os.File
	var out bytes.Buffer
	code := checkNoFDLeaks(func() int {
		var err error
		leaked, err = os.Create(path)
		if err != nil {
			t.Error(err)
		}
		return 0
	}, &out, 50*time.Millisecond)
	if leaked != nil {
		defer leaked.Close()
	}
	if code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	if !strings.Contains(out.String(), "fd leak: 1 file descriptor(s)") || !strings.Contains(out.String(), " -> "+path) {
		t.Errorf("report does not name the leaked fd:\n%s", out.String())
	}

	// A failing run keeps its own exit code.
	code = checkNoFDLeaks(func() int {
		f, _ := os.Open(os.DevNull)
		t.Cleanup(func() { f.Close() })
		return 3
	}, &out, 50*time.Millisecond)
	if code != 3 {
		t.Errorf("exit code %d, want the tests' 3", code)
	}
}

// Fds that goroutines close shortly after the tests end are not leaks.
func TestCheckNoFDLeaksWaitsForClose(t *testing.T) {
	var out bytes.Buffer
	closed := make(chan struct{})
	code := checkNoFDLeaks(func() int {
		r, w, err := os.Pipe()
		if err != nil {
			t.Error(err)
			return 1
		}
		go func() {
			defer close(closed)
			time.Sleep(100 * time.Millisecond) // The late close under test, not synchronisation.
			r.Close()
			w.Close()
		}()
		return 0
	}, &out, 5*time.Second)
	<-closed
	if code != 0 {
		t.Fatalf("exit code %d, want 0; report:\n%s", code, out.String())
	}
}

// fdCheckChildEnv marks the copy of the test binary that
// TestCheckNoFDLeaksInTestMain starts; its value says whether to leak.
const fdCheckChildEnv = "BPFSUP_TESTUTIL_FDCHECK_CHILD"

// childLeak keeps the fd the child leaks reachable, so no finalizer closes it.
var childLeak *os.File

// End to end, in a fresh test binary whose TestMain uses CheckNoFDLeaks: a
// test that uses pollable files and closes them passes; one that leaks an
// fd passes too, but the binary fails and names the fd.
func TestCheckNoFDLeaksInTestMain(t *testing.T) {
	switch os.Getenv(fdCheckChildEnv) {
	case "clean":
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		r.Close()
		w.Close()
		return
	case "leak":
		var err error
		if childLeak, err = os.Open(os.DevNull); err != nil {
			t.Fatal(err)
		}
		return
	}

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		mode   string
		failed bool
		report string
	}{
		{"clean", false, ""},
		{"leak", true, "fd leak: 1 file descriptor(s) opened by the tests still open:\n\tfd "},
	} {
		cmd := exec.Command(exe, "-test.run=^TestCheckNoFDLeaksInTestMain$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), fdCheckChildEnv+"="+tc.mode)
		out, err := cmd.CombinedOutput()
		if !strings.Contains(string(out), "--- PASS: TestCheckNoFDLeaksInTestMain") {
			t.Fatalf("%s child's test did not pass: %v\n%s", tc.mode, err, out)
		}
		if failed := err != nil; failed != tc.failed {
			t.Fatalf("%s child: exit error %v, want failure %v\n%s", tc.mode, err, tc.failed, out)
		}
		if tc.report != "" && (!strings.Contains(string(out), tc.report) || !strings.Contains(string(out), " -> "+os.DevNull)) {
			t.Fatalf("%s child's report does not name the leaked fd:\n%s", tc.mode, out)
		}
	}
}
