package pinstore

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// TestRuntimeRecord: a supervisor's record is read back as written, by the
// key its pid gives; the records and temporary files of supervisors of this
// pid namespace that no longer run are removed; a running one's, those of
// other pid namespaces (whose supervisors cannot be seen from here) and
// anything else in the state directory stay.
func TestRuntimeRecord(t *testing.T) {
	s := mustPlainStore(t)
	me := SelfRuntimeKey()
	if k, ok := RuntimeKeyOf(os.Getpid()); !ok || k != me {
		t.Fatalf("key of this process by its pid: %+v, %v; its own: %+v", k, ok, me)
	}
	rec := &SupervisorRecord{PID: me.PID, Version: "v1", Started: time.Now().UTC(), ChildPID: 42, Restarts: 3, Ready: true}
	if err := s.WriteRuntime(me, rec); err != nil {
		t.Fatal(err)
	}
	got := s.ReadRuntime(me)
	if got == nil || got.ChildPID != 42 || got.Restarts != 3 || !got.Ready || !got.Started.Equal(rec.Started) {
		t.Fatalf("read back %+v, want %+v", got, rec)
	}
	other := RuntimeKey{NS: me.NS + 1, PID: me.PID} // the same pid in another namespace
	if s.ReadRuntime(other) != nil {
		t.Errorf("a record for %+v, which wrote none", other)
	}
	if err := s.WriteRuntime(other, &SupervisorRecord{PID: me.PID, ChildPID: 7}); err != nil {
		t.Fatal(err)
	}
	if got := s.ReadRuntime(me); got == nil || got.ChildPID != 42 {
		t.Fatalf("the record of the same pid in another namespace replaced this one's: %+v", got)
	}

	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	gone := RuntimeKey{NS: me.NS, PID: dead.Process.Pid}
	if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(gone.PID))); err == nil {
		t.Skipf("pid %d of an exited process runs again already", gone.PID)
	}
	if err := s.WriteRuntime(gone, &SupervisorRecord{PID: gone.PID}); err != nil {
		t.Fatal(err)
	}
	tmp := "." + gone.name() + ".tmp"
	for _, n := range []string{tmp, "fw.json", "fw.lock", "supervisor.x.json", "supervisor.1.007.json"} {
		if err := os.WriteFile(filepath.Join(s.StateDir, n), []byte("{}"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s.RemoveDeadRuntimes(me)
	for n, want := range map[string]bool{
		me.name():               true,
		other.name():            true,
		gone.name():             false,
		tmp:                     false,
		"fw.json":               true,
		"fw.lock":               true,
		"supervisor.x.json":     true,
		"supervisor.1.007.json": true,
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
