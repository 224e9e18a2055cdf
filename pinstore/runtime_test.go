package pinstore

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestRuntimeRecord: a supervisor's record is read back as written, by pid;
// the records and temporary files of supervisors that no longer run are
// removed, a running one's and anything else in the state directory stay.
func TestRuntimeRecord(t *testing.T) {
	s := mustPlainStore(t)
	me := os.Getpid()
	rec := &SupervisorRecord{PID: me, Version: "v1", Started: time.Now().UTC(), ChildPID: 42, Restarts: 3, Ready: true}
	if err := s.WriteRuntime(rec); err != nil {
		t.Fatal(err)
	}
	got := s.ReadRuntime(me)
	if got == nil || got.ChildPID != 42 || got.Restarts != 3 || !got.Ready || !got.Started.Equal(rec.Started) {
		t.Fatalf("read back %+v, want %+v", got, rec)
	}
	if s.ReadRuntime(me+1) != nil {
		t.Errorf("a record for pid %d, which wrote none", me+1)
	}

	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	gone := dead.Process.Pid
	if _, err := os.Stat(filepath.Join("/proc", itoa(gone))); err == nil {
		t.Skipf("pid %d of an exited process runs again already", gone)
	}
	if err := s.WriteRuntime(&SupervisorRecord{PID: gone}); err != nil {
		t.Fatal(err)
	}
	leftovers := []string{".supervisor." + itoa(gone) + ".json.tmp", "fw.json", "fw.lock", "supervisor.x.json", "supervisor.007.json"}
	for _, n := range leftovers {
		if err := os.WriteFile(filepath.Join(s.StateDir, n), []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s.RemoveDeadRuntimes()
	for n, want := range map[string]bool{
		"supervisor." + itoa(me) + ".json":   true,
		"supervisor." + itoa(gone) + ".json": false,
		leftovers[0]:                         false,
		"fw.json":                            true,
		"fw.lock":                            true,
		"supervisor.x.json":                  true,
		"supervisor.007.json":                true,
	} {
		_, err := os.Stat(filepath.Join(s.StateDir, n))
		if (err == nil) != want {
			t.Errorf("%s: present %v, want %v", n, err == nil, want)
		}
	}
	s.RemoveRuntime(me)
	if s.ReadRuntime(me) != nil {
		t.Error("record still there after RemoveRuntime")
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
