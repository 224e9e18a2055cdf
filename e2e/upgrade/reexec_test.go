package upgrade

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/control"
	"github.com/bpfsup/bpfsup/internal/e2e"
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
	st := e2e.ObjectStatus(t, e, "dropfilter")
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
		st := e2e.ObjectStatus(t, e, "dropfilter")
		if st.Supervisor.PID != pid || st.Supervisor.ChildPID != child {
			t.Fatalf("after upgrade %d: supervisor pid %d child %d, want %d and %d", n, st.Supervisor.PID, st.Supervisor.ChildPID, pid, child)
		}
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || exe != bin {
			t.Fatalf("after upgrade %d: bpfsup runs %q (%v), want the new %s", n, exe, err, bin)
		}
		// Exec'd through /proc/self/fd/N, it names itself again.
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err != nil || strings.TrimSpace(string(comm)) != filepath.Base(bin) {
			t.Fatalf("after upgrade %d: bpfsup's name (comm) is %q (%v), want %q", n, comm, err, filepath.Base(bin))
		}
		if state, alive := testutil.ProcState(child); !alive {
			t.Fatalf("after upgrade %d: the child %d is gone (state %c): its parent-death signal fired", n, child, state)
		}
		if ppid := testutil.ParentPID(t, child); ppid != pid {
			t.Fatalf("after upgrade %d: the child's parent is %d, not bpfsup %d", n, ppid, pid)
		}
		if l, pr := linkIDs(t, e, "xdp_drop"); l != linkID || pr != progID || st.Generation != gen {
			t.Fatalf("after upgrade %d: link %d program %d generation %d; were %d, %d, %d", n, l, pr, st.Generation, linkID, progID, gen)
		}
		if got := strings.Count(p.Output(), "locks_kept=2"); got != n { // the lock file and the pin directory
			t.Fatalf("after upgrade %d: %d re-execs kept the object's lock, want %d", n, got, n)
		}
		if strings.Contains(p.Output(), "got user defined signal 2") {
			t.Fatalf("SIGUSR2 was forwarded to the child")
		}
		if pids := e2e.PIDs(childLine, p.Output()); pids[len(pids)-1] != child || countLines(p, `"child started"`) != starts {
			t.Fatalf("after upgrade %d: a child was started: %v", n, pids)
		}
	}

	upgrade("upgrade-v2", 1) // exec on the thread that forked the child
	upgrade("upgrade-v1", 2) // the adopted child's parent is the main thread
	if out := e2e.MustRun(t, e, "reload"); !strings.Contains(out, "object dropfilter: unchanged") {
		t.Fatalf("reload after the self-upgrades changed something:\n%s", out)
	}
	if n := strings.Count(p.Output(), `msg="object ready" object=dropfilter maps=2 programs=2 links=1 adopted=2 loaded=0`); n != 2 {
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
	if ppid := testutil.ParentPID(t, child); ppid != pid {
		t.Fatalf("the restarted child's parent is %d, not bpfsup %d", ppid, pid)
	}
	testutil.WaitFor(t, 5*time.Second, "status to show the new child", func() bool {
		sup := status(t, e, "dropfilter").Supervisor
		return sup != nil && sup.ChildPID == child
	})
	upgrade("upgrade-v2", 3) // a child forked by a re-executed program
}

// TestSelfUpgradeKeepsSockets: across SIGUSR2, bpfsup hands its listening
// sockets to the new program. `bpfsup status` over the control socket and
// scrapes of the metrics endpoint, made without pause while bpfsup
// re-executes, all succeed (they wait in the socket instead of being
// refused); the metrics keep their port; and with --notify=child the child,
// started before the exec, says READY=1 after it on the NOTIFY_SOCKET it was
// given, and bpfsup passes it on to systemd.
func TestSelfUpgradeKeepsSockets(t *testing.T) {
	e := testutil.MustEnv(t)
	p, sd, _ := startNotifyChild(t, e, "upk", "--metrics-addr", "127.0.0.1:0")
	child := waitChildren(t, p, 1)
	metricsAddr := regexp.MustCompile(`msg="serving metrics" addr=(\S+)`)
	p.WaitOutput(t, `msg="serving metrics"`, 10*time.Second)
	addr := metricsAddr.FindStringSubmatch(p.Output())[1]
	ctl := control.Socket(e.StateDir, p.Pid())
	if i := sd.Index("READY=1"); i >= 0 {
		t.Fatalf("READY=1 before the child said it: %q", sd.Lines())
	}
	// A reload before the upgrade: its metrics go on after it.
	e2e.MustRun(t, e, "reload")
	reloadMetrics := func() string {
		t.Helper()
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		var lines []string
		for _, l := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(l, "bpfsup_reloads_total{") || strings.HasPrefix(l, "bpfsup_last_reload_success ") {
				lines = append(lines, l)
			}
		}
		return strings.Join(lines, "; ")
	}
	wantReloads := `bpfsup_last_reload_success 1; bpfsup_reloads_total{result="failure"} 0; bpfsup_reloads_total{result="success"} 1`
	if got := reloadMetrics(); got != wantReloads {
		t.Fatalf("reload metrics before the upgrade: %s, want %s", got, wantReloads)
	}

	// Ask without pause until well after the new program is up.
	var (
		stop               atomic.Bool
		wg                 sync.WaitGroup
		mu                 sync.Mutex
		failures           []string
		before, acrossExec int
	)
	// phase: 0 before the exec, 1 from "re-executing" to "re-executed", 2
	// after. A request that starts before 2 and ends in it waited through
	// the exec.
	phase := func() int {
		out := p.Output()
		switch {
		case !strings.Contains(out, `msg="re-executing bpfsup"`):
			return 0
		case !strings.Contains(out, "msg=re-executed"):
			return 1
		}
		return 2
	}
	record := func(what string, started int, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failures = append(failures, fmt.Sprintf("%s: %v", what, err))
		}
		if started == 0 {
			before++
		}
		if started < 2 && phase() == 2 {
			acrossExec++
		}
	}
	client := &http.Client{Timeout: 10 * time.Second}
	wg.Add(2)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			started := phase()
			r, err := control.Request(ctl, "status", 10*time.Second)
			if err == nil && !r.OK {
				err = errors.New(r.Error)
			}
			record("status", started, err)
		}
	}()
	go func() {
		defer wg.Done()
		for !stop.Load() {
			started := phase()
			resp, err := client.Get("http://" + addr + "/metrics")
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode != http.StatusOK {
					err = errors.New(resp.Status)
				}
			}
			record("metrics", started, err)
		}
	}()
	testutil.WaitFor(t, 10*time.Second, "requests before the upgrade", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return before >= 10
	})
	p.Kill(syscall.SIGUSR2)
	p.WaitOutput(t, "msg=re-executed", 20*time.Second)
	testutil.WaitFor(t, 10*time.Second, "the metrics served again", func() bool {
		return strings.Count(p.Output(), `msg="serving metrics"`) == 2
	})
	stop.Store(true)
	wg.Wait()
	t.Logf("requests that waited through the re-exec: %d", acrossExec)
	if len(failures) > 0 {
		t.Fatalf("%d requests failed across the re-exec, first: %s\n%s", len(failures), failures[0], p.Output())
	}
	if acrossExec == 0 {
		t.Fatal("no request waited through the re-exec: the hand-over went untested")
	}
	if !strings.Contains(p.Output(), "sockets_kept=3") {
		t.Fatalf("the re-exec did not keep the control, notify and metrics sockets:\n%s", p.Output())
	}
	if got := metricsAddr.FindAllStringSubmatch(p.Output(), -1)[1][1]; got != addr {
		t.Fatalf("metrics moved from %s to %s across the re-exec", addr, got)
	}
	if got := reloadMetrics(); got != wantReloads {
		t.Fatalf("reload metrics after the upgrade: %s, want them carried over: %s", got, wantReloads)
	}

	// The child, adopted by the new program, says it is ready.
	if err := syscall.Kill(child, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	p.WaitOutput(t, "notified ok=true", 10*time.Second)
	sd.WaitFor(t, "READY=1")
	sd.WaitFor(t, "STATUS=child: serving")
	if c := sd.Count("READY=1"); c != 1 {
		t.Fatalf("READY=1 sent %d times, want once: %q", c, sd.Lines())
	}
}

// TestSelfUpgradeToOlderProtocol: SIGUSR2 to a binary that does not take
// the listening sockets over (a build from before they were handed over,
// whose `debug reexec-protocol` prints its help) keeps them out of the exec:
// that binary listens again itself, which an inherited socket holding the
// metrics port would make fail.
func TestSelfUpgradeToOlderProtocol(t *testing.T) {
	e := testutil.MustEnv(t)
	nsR := testutil.MustNetns(t, "upo")
	_, x := testutil.MustVethPair(t, nsR, nsR)
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin", "bpfsup")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(e.Bin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	obj := filepath.Join(dir, "dropfilter.bpf.o")
	deploy(t, obj, "dropfilter")
	p := startBpfsup(t, e, bin, "--metrics-addr", "127.0.0.1:0", "-o", obj, "-a", "xdp_drop@xdp:"+x.Name, "--netns", nsR.Path)
	waitChildren(t, p, 1)

	// The "older" build: asked for its protocol, it prints the help of
	// `debug`, as every build before protocol 2 does.
	old := "#!/bin/sh\n" +
		"if [ \"$1\" = debug ] && [ \"$2\" = reexec-protocol ]; then echo 'Tools for testing bpfsup itself'; exit 0; fi\n" +
		"exec " + e.Bin + " \"$@\"\n"
	writeAtomic(t, bin, []byte(old))
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	p.Kill(syscall.SIGUSR2)
	p.WaitOutput(t, "msg=re-executed", 20*time.Second)
	testutil.WaitFor(t, 10*time.Second, "the metrics served again", func() bool {
		return strings.Count(p.Output(), `msg="serving metrics"`) == 2
	})
	if !strings.Contains(p.Output(), "protocol=1") || !strings.Contains(p.Output(), "sockets_kept=0") {
		t.Fatalf("the re-exec to a protocol-1 build handed sockets over:\n%s", p.Output())
	}
	// Its control socket is its own, made after the metrics' listener.
	testutil.WaitFor(t, 10*time.Second, "the re-executed bpfsup to answer on its control socket", func() bool {
		r, err := control.Request(control.Socket(e.StateDir, p.Pid()), "status", 10*time.Second)
		return err == nil && r.OK
	})
}

// TestReloadNotifyChild: with --notify=child, a reload that restarts the
// child says READY=1 (the end of the reload, for systemd's notify-reload)
// only once the new child said it, as the first start does.
func TestReloadNotifyChild(t *testing.T) {
	e := testutil.MustEnv(t)
	p, sd, obj := startNotifyChild(t, e, "unc")
	child := waitChildren(t, p, 1)
	if err := syscall.Kill(child, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	sd.WaitFor(t, "READY=1")

	deploy(t, obj, "dropfilter_v2")
	if out := e2e.MustRun(t, e, "reload"); !strings.Contains(out, "child restarted") {
		t.Fatalf("the reload did not restart the child:\n%s", out)
	}
	newChild := waitChildren(t, p, 2)
	sd.WaitFor(t, "RELOADING=1")
	// bpfsup's STATUS= after the reload comes after its READY=1 would.
	testutil.WaitFor(t, 10*time.Second, "bpfsup's status after the reload", func() bool {
		lines := sd.Lines()
		return slices.IndexFunc(lines[sd.Index("RELOADING=1"):], func(l string) bool { return strings.HasPrefix(l, "STATUS=objects=") }) >= 0
	})
	if c := sd.Count("READY=1"); c != 1 {
		t.Fatalf("READY=1 sent %d times before the restarted child said it, want once (the first start's): %q", c, sd.Lines())
	}
	if err := syscall.Kill(newChild, syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "READY=1 after the restarted child's", func() bool { return sd.Count("READY=1") == 2 })
}

// startNotifyChild runs bpfsup with --notify=child (and extra flags) over
// dropfilter on a veth of a namespace named after prefix, with the test's
// child, and NOTIFY_SOCKET on a listener of the test: bpfsup, the listener
// and the object file.
func startNotifyChild(t *testing.T, e *testutil.Env, prefix string, extra ...string) (*testutil.Proc, *testutil.NotifyListener, string) {
	t.Helper()
	nsR := testutil.MustNetns(t, prefix)
	_, x := testutil.MustVethPair(t, nsR, nsR)
	obj := filepath.Join(t.TempDir(), "dropfilter.bpf.o")
	deploy(t, obj, "dropfilter")
	sd := testutil.ListenNotify(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--notify", "child"}, extra...)
	args = append(args, "-o", obj, "-a", "xdp_drop@xdp:"+x.Name, "--netns", nsR.Path, "--", self)
	cmd := exec.Command(e.Bin, e.Args("run", args...)...)
	cmd.Env = append(os.Environ(), childEnv+"=1", "NOTIFY_SOCKET="+sd.Path)
	return testutil.StartProc(t, cmd), sd, obj
}
