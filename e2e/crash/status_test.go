package crashtest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/status"

	"github.com/cilium/ebpf/link"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// TestStatus checks `bpfsup status` and `--json` with a running supervisor
// and without one: the same maps, programs and links, read from the pins and
// the kernel; the supervisor's pid, child pid, restarts and generation while
// it runs, none afterwards.
func TestStatus(t *testing.T) {
	n := newNetRig(t)
	r := newRig(t, n)
	r.seedDropPorts(t)
	sup := r.startReady(t)
	st := r.checkConverged(t)
	child := childPID(t, sup.Output())

	running := r.status(t)
	if s := running.Supervisor; s == nil || s.PID != sup.Pid() || s.ChildPID != child || s.Restarts != 0 || s.Version == "" || s.Started.IsZero() {
		t.Errorf("supervisor %+v, want pid %d child %d restarts 0 with a version and start time", s, sup.Pid(), child)
	}
	if running.Generation != 0 || running.Source != r.objPath || running.ObjectSHA256 == "" {
		t.Errorf("generation %d source %q sha %q", running.Generation, running.Source, running.ObjectSHA256)
	}
	checkStatusObjects(t, r, running, st)

	human := e2e.MustRun(t, r.env, "status")
	for _, w := range []string{
		fmt.Sprintf("supervisor pid %d", sup.Pid()), fmt.Sprintf("child pid %d", child), "restarts 0", "generation 0",
		fmt.Sprintf("id %-6d", st.maps["drop_ports"]), "entries 2", fmt.Sprintf("id %-6d", st.progs["xdp_drop"]),
		fmt.Sprintf("id %-6d", st.link), "hook xdp:" + r.ifB.Name + " attached",
	} {
		if !strings.Contains(human, w) {
			t.Errorf("status lacks %q:\n%s", w, human)
		}
	}

	// A restart of the child shows in status with its count, at once, from
	// the supervisor's record; the manifest is not written again.
	manifest := filepath.Join(r.env.StateDir, objName+".json")
	before, err := os.Stat(manifest)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(child, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "a new child in status", func() bool {
		s := r.status(t).Supervisor
		return s != nil && s.ChildPID != 0 && s.ChildPID != child
	})
	if s := r.status(t).Supervisor; s == nil {
		t.Error("status after one restart of the child names no supervisor")
	} else if s.Restarts != 1 {
		t.Errorf("status after one restart of the child: restarts %d, want 1", s.Restarts)
	}
	if after, err := os.Stat(manifest); err != nil || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("manifest written again by a restart of the child (%v -> %v, %v)", before.ModTime(), after.ModTime(), err)
	}
	if m, _ := filepath.Glob(filepath.Join(r.env.StateDir, fmt.Sprintf("supervisor.*.%d.json", sup.Pid()))); len(m) != 1 {
		t.Errorf("the running supervisor's record: %v", m)
	}

	// An upgrade raises the generation.
	stop(t, sup)
	r.setObject(t, v2)
	sup = r.startReady(t)
	st = r.checkConverged(t)
	if g := r.status(t).Generation; g != 1 {
		t.Errorf("generation %d after an upgrade, want 1", g)
	}
	stop(t, sup)

	stopped := r.status(t)
	if stopped.Supervisor != nil {
		t.Errorf("supervisor %+v after it stopped, want none", stopped.Supervisor)
	}
	checkStatusObjects(t, r, stopped, st)
	if human := e2e.MustRun(t, r.env, "status"); !strings.Contains(human, "supervisor: none running") {
		t.Errorf("status without a supervisor:\n%s", human)
	}

	// The JSON keeps the documented field names.
	raw := e2e.MustRun(t, r.env, "status", "--json")
	var doc map[string]any
	if err := json.Unmarshal([]byte(raw), &doc); err != nil {
		t.Fatal(err)
	}
	if doc["schema"] != float64(1) {
		t.Errorf("schema %v, want 1", doc["schema"])
	}
	obj := doc["objects"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "dir", "source", "object_sha256", "generation", "supervisor", "maps", "programs", "links"} {
		if _, ok := obj[k]; !ok {
			t.Errorf("object lacks %q: %v", k, obj)
		}
	}
	link := obj["links"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "id", "type", "program_id", "program", "hook", "target", "netns", "ifindex", "state", "mechanism", "upgrade"} {
		if _, ok := link[k]; !ok {
			t.Errorf("link lacks %q: %v", k, link)
		}
	}
	prog := obj["programs"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "id", "type", "tag", "loaded_at"} {
		if _, ok := prog[k]; !ok {
			t.Errorf("program lacks %q: %v", k, prog)
		}
	}
	m := obj["maps"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "path", "id", "type", "key_size", "value_size", "max_entries", "entries"} {
		if _, ok := m[k]; !ok {
			t.Errorf("map lacks %q: %v", k, m)
		}
	}
}

// checkStatusObjects checks the maps, programs and links of a status
// against what is installed.
func checkStatusObjects(t *testing.T, r *rig, s status.ObjectStatus, st state) {
	t.Helper()
	if len(s.Maps) != 2 || len(s.Programs) != 2 || len(s.Links) != 1 {
		t.Fatalf("status has %d maps, %d programs, %d links", len(s.Maps), len(s.Programs), len(s.Links))
	}
	for _, m := range s.Maps {
		if m.ID != st.maps[m.Name] {
			t.Errorf("map %s: id %d, want %d", m.Name, m.ID, st.maps[m.Name])
		}
	}
	if mp := s.Maps[1]; mp.Name != "drop_ports" || mp.Type != "Hash" || mp.Entries != 2 || mp.MaxEntries != 64 {
		t.Errorf("drop_ports: %+v, want a Hash of 64 with 2 entries", mp)
	}
	for _, p := range s.Programs {
		if p.ID != st.progs[p.Name] || len(p.Tag) != 16 || p.LoadedAt.IsZero() || time.Since(p.LoadedAt) > time.Hour {
			t.Errorf("program %s: %+v, want id %d, a tag, a recent load time", p.Name, p, st.progs[p.Name])
		}
	}
	l := s.Links[0]
	if l.ID != st.link || l.ProgramID != st.progs["xdp_drop"] || l.Program != "xdp_drop" || l.Hook != "xdp:"+r.ifB.Name ||
		l.Target != r.ifB.Name || l.State != "attached" || int(l.Ifindex) != r.ifB.Index || l.Netns != r.nsB.Path {
		t.Errorf("link: %+v", l)
	}
}

// TestSecondSupervisorRefused starts a second supervisor for the same object:
// it stops at once, naming the first one's pid, and changes nothing.
func TestSecondSupervisorRefused(t *testing.T) {
	n := newNetRig(t)
	r := newRig(t, n)
	r.seedDropPorts(t)
	first := r.startReady(t)
	st := r.checkConverged(t)

	r.setObject(t, v2) // would be an upgrade, were it allowed
	begin := time.Now()
	out := r.runExpectFailure(t)
	took := time.Since(begin)
	if !strings.Contains(out, fmt.Sprintf("pid %d", first.Pid())) || !strings.Contains(out, "locked") {
		t.Errorf("second supervisor's error does not name the first one's pid %d:\n%s", first.Pid(), out)
	}
	t.Logf("the second supervisor stopped after %v", took.Round(time.Millisecond))
	r.setObject(t, v1)
	if got := r.checkConverged(t); got.progs["xdp_drop"] != st.progs["xdp_drop"] || got.link != st.link {
		t.Errorf("the second supervisor changed the state: %+v, was %+v", got, st)
	}
	select {
	case <-first.Done():
		t.Fatalf("the first supervisor exited:\n%s", first.Output())
	default:
	}
	stop(t, first)
}

// TestMalformedObjects gives bpfsup objects it cannot use: each stops it with
// an error that says why, and leaves nothing behind: no pins, no manifest, no
// lock, no program on the hook.
func TestMalformedObjects(t *testing.T) {
	n := newNetRig(t)
	dropfilter, err := os.ReadFile(testutil.BPFObject(v1))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		content func(t *testing.T) []byte
		prog    string
		words   []string
	}{
		{"truncated", func(*testing.T) []byte { return dropfilter[:len(dropfilter)/2] }, "xdp_drop",
			[]string{"the ELF file is truncated"}},
		{"not-elf", func(*testing.T) []byte { return []byte("#!/bin/sh\necho this is not an ELF object\n") }, "xdp_drop",
			[]string{"not an ELF file", "#!/bin/s"}},
		{"empty", func(*testing.T) []byte { return nil }, "xdp_drop", []string{"not an ELF file (0 bytes"}},
		{"big-endian", objectFile("counter_be"), "count_packets", []string{"BigEndian", "LittleEndian", "byte order"}},
		{"no-license", objectFile("nolicense"), "nolicense", []string{"no license section", "SEC(\"license\")"}},
		{"verifier-rejects", objectFile("bad_verifier"), "bad", []string{"verifier log (last lines)", "invalid access to packet"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := testutil.MustEnv(t)
			path := filepath.Join(t.TempDir(), "obj.bpf.o")
			if err := os.WriteFile(path, tt.content(t), 0o644); err != nil {
				t.Fatal(err)
			}
			p := testutil.StartProc(t, exec.Command(e.Bin, e.Args("run", "--netns", n.nsB.Path, "-o", path,
				"-a", tt.prog+"@xdp:"+n.ifB.Name, "--", "sleep", "3600")...))
			if code := p.Wait(t, 20*time.Second); code == 0 {
				t.Fatalf("bpfsup accepted the object:\n%s", p.Output())
			}
			out := p.Output()
			e2e.WantAll(t, out, tt.words...)
			if strings.Contains(out, "panic") || strings.Contains(out, "child started") {
				t.Errorf("output:\n%s", out)
			}
			if got := e2e.DirEntries(t, e.PinRoot); len(got) != 0 {
				t.Errorf("pin root holds %v after the failure", got)
			}
			if got := e2e.DirEntries(t, e.StateDir); len(got) != 0 {
				t.Errorf("state dir holds %v after the failure", got)
			}
			if id := n.progID(t); id != 0 {
				t.Errorf("%s runs XDP program %d after the failure", n.ifB.Name, id)
			}
		})
	}

	// An upgrade to an object the verifier refuses leaves the running
	// version as it was.
	t.Run("upgrade-verifier-rejects", func(t *testing.T) {
		r := newRig(t, n)
		r.seedDropPorts(t)
		p := r.startReady(t)
		st := r.checkConverged(t)
		kill(t, p)
		bad, err := os.ReadFile(testutil.BPFObject("dropfilter_bad"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(r.objPath, bad, 0o644); err != nil {
			t.Fatal(err)
		}
		out := r.runExpectFailure(t)
		e2e.WantAll(t, out, "verifier log (last lines)", "xdp_drop")
		r.setObject(t, v1)
		if got := r.checkConverged(t); got.progs["xdp_drop"] != st.progs["xdp_drop"] || got.link != st.link {
			t.Errorf("the failed upgrade changed the state: %+v, was %+v", got, st)
		}
	})
}

func objectFile(name string) func(t *testing.T) []byte {
	return func(t *testing.T) []byte {
		data, err := os.ReadFile(testutil.BPFObject(name))
		if err != nil {
			t.Fatal(err)
		}
		return data
	}
}

// TestStatusTruth: status is healthy (and `status --ready` exits 0) only
// while every link runs the program bpfsup installed on its hook and every
// pin is bpfsup's. A link swapped to another program behind bpfsup's back
// (BPF_LINK_UPDATE by hand), a map pin replaced by another tool's map of
// the same shape, and a supervisor whose lock file or state directory was
// removed under it are each reported as a problem, and the health check
// (the README's) is false. Before, status called all of them healthy.
func TestStatusTruth(t *testing.T) {
	n := newNetRig(t)
	healthy := func(t *testing.T, r *rig) (bool, []string) {
		t.Helper()
		st := e2e.Status(t, r.env)
		var problems []string
		for _, o := range st.Objects {
			problems = append(problems, o.Problems...)
		}
		return st.Healthy, problems
	}
	ready := func(t *testing.T, r *rig) (int, string) {
		t.Helper()
		out, code := r.env.Run(t, "status", "--ready")
		return code, out
	}
	for _, tt := range []struct {
		name   string
		break_ func(t *testing.T, r *rig, st state)
		words  []string
	}{
		{"link-swapped", func(t *testing.T, r *rig, st state) {
			foreign, _ := foreignCounter(t)
			l, err := link.LoadPinnedLink(r.pinPath("links", "xdp_drop"), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if err := l.Update(foreign); err != nil {
				t.Fatal(err)
			}
		}, []string{"link xdp_drop: runs program id", `"count_packets"`, "not the program bpfsup installed", "swapped behind bpfsup's back"}},
		{"map-replaced", func(t *testing.T, r *rig, st state) {
			remove(t, r.pinPath("maps", "drop_ports"))
			r.seedDropPortsMapOnly(t)
		}, []string{"map drop_ports:", "not the map bpfsup made"}},
		{"lock-file-removed", func(t *testing.T, r *rig, st state) {
			remove(t, filepath.Join(r.env.StateDir, objName+".lock"))
		}, []string{"holds the pins, but its lock file", "is gone"}},
		{"state-dir-removed", func(t *testing.T, r *rig, st state) {
			if err := os.RemoveAll(r.env.StateDir); err != nil {
				t.Fatal(err)
			}
		}, []string{"holds the pins, but its lock file", "no manifest of bpfsup's"}},
		// The object's whole pin directory removed: listed from its
		// manifest, not left out of the health check.
		{"pin-dir-removed", func(t *testing.T, r *rig, st state) {
			if err := os.RemoveAll(r.objDir()); err != nil {
				t.Fatal(err)
			}
		}, []string{"pin directory", "is gone", "link xdp_drop: bpfsup installed id", "nothing is pinned at"}},
		// The pins and the manifest removed under the running supervisor,
		// which still holds the object's lock file.
		{"pins-and-manifest-removed", func(t *testing.T, r *rig, st state) {
			if err := os.RemoveAll(r.objDir()); err != nil {
				t.Fatal(err)
			}
			remove(t, filepath.Join(r.env.StateDir, objName+".json"))
		}, []string{"no manifest of bpfsup's"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, n)
			r.seedDropPorts(t)
			sup := r.startReady(t)
			st := r.checkConverged(t)
			if ok, problems := healthy(t, r); !ok {
				t.Fatalf("status of a clean start is not healthy: %q", problems)
			}
			if code, out := ready(t, r); code != 0 {
				t.Fatalf("status --ready of a clean start: exit %d\n%s", code, out)
			}
			tt.break_(t, r, st)
			ok, problems := healthy(t, r)
			if ok {
				t.Errorf("status calls it healthy")
			}
			all := strings.Join(problems, "\n")
			for _, w := range tt.words {
				if !strings.Contains(all, w) {
					t.Errorf("status problems lack %q:\n%s", w, all)
				}
			}
			if o := r.status(t); o.Supervisor == nil || o.Supervisor.PID != sup.Pid() {
				t.Errorf("status names supervisor %+v, want pid %d", o.Supervisor, sup.Pid())
			}
			if code, out := ready(t, r); code == 0 || !strings.Contains(out, "not ready") {
				t.Errorf("status --ready: exit %d, want 1 and why:\n%s", code, out)
			}
			stop(t, sup)
		})
	}
}

// TestManifestDebris: temporary files of manifests that kills left in the
// state directory (".dropfilter.json-NNN" of earlier versions, and
// ".dropfilter.json.tmp") are problems in status, and go with the next
// start, and with down. Before, they piled up for good.
func TestManifestDebris(t *testing.T) {
	n := newNetRig(t)
	r := newRig(t, n)
	r.seedDropPorts(t)
	sup := r.startReady(t)
	r.checkConverged(t)
	kill(t, sup)
	debris := func() []string {
		return []string{
			filepath.Join(r.env.StateDir, "."+objName+".json-123456789"),
			filepath.Join(r.env.StateDir, "."+objName+".json.tmp"),
		}
	}
	plant := func() {
		for _, p := range debris() {
			if err := os.WriteFile(p, []byte("{\"version\": 1, \"maps\""), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Not ours: left alone by everything. A directory under a name of
	// debris is not bpfsup's either: it writes files there.
	other := filepath.Join(r.env.StateDir, "."+objName+".json-notes")
	if err := os.WriteFile(other, []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	otherDir := filepath.Join(r.env.StateDir, "."+objName+".json-42")
	if err := os.Mkdir(otherDir, 0o700); err != nil {
		t.Fatal(err)
	}
	plant()
	problems := strings.Join(r.status(t).Problems, "\n")
	for _, p := range debris() {
		if !strings.Contains(problems, "manifest debris "+p) {
			t.Errorf("status does not report %s:\n%s", p, problems)
		}
	}
	if !strings.Contains(problems, otherDir+": a directory named like manifest debris, not bpfsup's (left alone)") {
		t.Errorf("status does not report %s as not bpfsup's:\n%s", otherDir, problems)
	}
	sup = r.startReady(t)
	// The supervisor writes its manifest through the temporary name too:
	// what is there may be its own write under way, gone a moment later.
	for _, p := range debris() {
		testutil.WaitFor(t, 5*time.Second, p+" to be removed by the start", func() bool {
			_, err := os.Stat(p)
			return errors.Is(err, os.ErrNotExist)
		})
	}
	stop(t, sup)
	plant()
	if out, code := r.env.Run(t, "down"); code != 0 {
		t.Fatalf("bpfsup down: exit %d\n%s", code, out)
	}
	for _, p := range debris() {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s is still there after down", p)
		}
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("a file that only looks like debris was removed: %v", err)
	}
	if _, err := os.Stat(otherDir); err != nil {
		t.Errorf("a directory named like debris was removed: %v", err)
	}
}
