package upgrade

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// buildVersions builds bpfsup once per version, with main.version set, into
// dir/bpfsup-VERSION.
func buildVersions(t *testing.T, dir string, versions ...string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(versions))
	for i, v := range versions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if out, err := testutil.GoBuildBpfsup(v, filepath.Join(dir, "bpfsup-"+v)); err != nil {
				errs[i] = fmt.Errorf("build bpfsup %s: %v\n%s", v, err, out)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// install puts the build of version at path the way a package manager
// does: a new file renamed over the old one, which a running bpfsup keeps
// open under its old inode.
func install(t *testing.T, dir, version, path string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, "bpfsup-"+version))
	if err != nil {
		t.Fatal(err)
	}
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func parentPID(t *testing.T, pid int) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("process %d: %v", pid, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "PPid:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	t.Fatalf("process %d: no PPid", pid)
	return 0
}

// TestSelfUpgrade upgrades bpfsup itself with SIGUSR2, three times: a child
// started by the first program (forked on a thread of its own), a child
// adopted across an exec (whose parent thread is the main thread), and a
// child started by a re-executed program. Each time bpfsup keeps its pid,
// the child keeps running as bpfsup's child (its parent-death signal did
// not fire), nothing is reloaded, and status shows the new version.
func TestSelfUpgrade(t *testing.T) {
	e := testutil.MustEnv(t)
	nsR := testutil.MustNetns(t, "upx")
	_, x := testutil.MustVethPair(t, nsR, nsR)
	dir := t.TempDir()
	buildVersions(t, dir, "upgrade-v1", "upgrade-v2")
	bin := filepath.Join(dir, "bin", "bpfsup")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	install(t, dir, "upgrade-v1", bin)
	obj := filepath.Join(dir, "dropfilter.bpf.o")
	deploy(t, obj, "dropfilter")

	// Socket-activated, as under systemd: the socket must reach the child
	// through every re-exec.
	sock := filepath.Join(dir, "web.sock")
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("systemd-socket-activate", append([]string{"-l", sock, "--fdname=web", "-E", childEnv + "=1", bin},
		e.Args("run", "-o", obj, "-a", "xdp_drop@xdp:"+x.Name, "--netns", nsR.Path, "--", self)...)...)
	p := testutil.StartProc(t, cmd)
	// It starts bpfsup (in its own place) at the first connection.
	var conn net.Conn
	testutil.WaitFor(t, 10*time.Second, "the activation socket", func() bool {
		conn, err = net.Dial("unix", sock)
		return err == nil
	})
	defer conn.Close()
	child := waitChildren(t, p, 1)
	if !strings.Contains(p.Output(), "names=web:") {
		t.Fatalf("the child did not get the activation socket first:\n%s", p.Output())
	}
	pid := p.Pid()
	st := statusCLI(t, e, "dropfilter")
	if st.Supervisor == nil || st.Supervisor.Version != "upgrade-v1" || st.Supervisor.PID != pid {
		t.Fatalf("status before the upgrade: supervisor %+v, want pid %d version upgrade-v1", st.Supervisor, pid)
	}
	gen := st.Generation
	linkID, progID := linkIDs(t, e, "xdp_drop")

	upgrade := func(version string, n int) {
		t.Helper()
		starts := countLines(p, `"child started"`)
		install(t, dir, version, bin)
		p.Kill(syscall.SIGUSR2)
		testutil.WaitFor(t, 20*time.Second, "bpfsup to report version "+version, func() bool {
			st := status(t, e, "dropfilter")
			return st.Supervisor != nil && st.Supervisor.Version == version && strings.Count(p.Output(), "msg=re-executed") == n
		})
		st := statusCLI(t, e, "dropfilter")
		if st.Supervisor.PID != pid || st.Supervisor.ChildPID != child {
			t.Fatalf("after upgrade %d: supervisor pid %d child %d, want %d and %d", n, st.Supervisor.PID, st.Supervisor.ChildPID, pid, child)
		}
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || exe != bin {
			t.Fatalf("after upgrade %d: bpfsup runs %q (%v), want the new %s", n, exe, err, bin)
		}
		if state, alive := testutil.ProcState(child); !alive {
			t.Fatalf("after upgrade %d: the child %d is gone (state %c): its parent-death signal fired", n, child, state)
		}
		if ppid := parentPID(t, child); ppid != pid {
			t.Fatalf("after upgrade %d: the child's parent is %d, not bpfsup %d", n, ppid, pid)
		}
		if l, pr := linkIDs(t, e, "xdp_drop"); l != linkID || pr != progID || st.Generation != gen {
			t.Fatalf("after upgrade %d: link %d program %d generation %d; were %d, %d, %d", n, l, pr, st.Generation, linkID, progID, gen)
		}
		if got := strings.Count(p.Output(), "locks_kept=1"); got != n {
			t.Fatalf("after upgrade %d: %d re-execs kept the object's lock, want %d", n, got, n)
		}
		if strings.Contains(p.Output(), "got user defined signal 2") {
			t.Fatalf("SIGUSR2 was forwarded to the child")
		}
		if pids := childPIDs(p.Output()); pids[len(pids)-1] != child || countLines(p, `"child started"`) != starts {
			t.Fatalf("after upgrade %d: a child was started: %v", n, pids)
		}
	}

	upgrade("upgrade-v2", 1) // exec on the thread that forked the child
	upgrade("upgrade-v1", 2) // the adopted child's parent is the main thread
	if out := mustReload(t, e); !strings.Contains(out, "object dropfilter: unchanged") {
		t.Fatalf("reload after the self-upgrades changed something:\n%s", out)
	}
	if n := strings.Count(p.Output(), "loaded=0"); n != 2 {
		t.Fatalf("the re-executed bpfsup loaded programs (%d installs without loading, want 2):\n%s", n, p.Output())
	}

	// The re-executed bpfsup supervises the adopted child: it restarts it
	// when it dies.
	if err := syscall.Kill(child, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	child = waitChildren(t, p, 2)
	if strings.Count(p.Output(), "names=web:") != 2 {
		t.Fatalf("the child started after the re-execs did not get the activation socket:\n%s", p.Output())
	}
	if ppid := parentPID(t, child); ppid != pid {
		t.Fatalf("the restarted child's parent is %d, not bpfsup %d", ppid, pid)
	}
	testutil.WaitFor(t, 5*time.Second, "status to show the new child", func() bool {
		sup := status(t, e, "dropfilter").Supervisor
		return sup != nil && sup.ChildPID == child
	})
	upgrade("upgrade-v2", 3) // a child forked by a re-executed program
}
