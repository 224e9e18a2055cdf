package supervisor

// Self-upgrade in place: on SIGUSR2 bpfsup execve(2)s its binary (a new
// version installed at the same path is picked up) with the same pid and
// command line. The child keeps running and stays bpfsup's child; the pins
// are not touched (the new program adopts everything, no verifier runs);
// the new program finds the child through BPFSUP_REEXEC_STATE and waits for
// it as its own.
//
// The child's parent-death signal fires when the *thread* that forked it
// ends, and execve ends every thread but the caller. Tried on Linux 6.18:
// exec from any other thread, the main thread included, leaves the child
// dead (a zombie with SIGKILL) by the time the new program runs; exec from
// the forking thread keeps it alive, and that thread becomes the new
// program's main thread, the child's parent from then on. So the exec runs
// on the forking thread (spawn.Process.OnForkThread) for a child this
// program started, and on the main thread for a child adopted across an
// earlier exec: the new program locks its main goroutine to the main thread
// (init below, so that main and Run run there) and serves exec requests on it.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/bpfsup/bpfsup/internal/environ"
	"github.com/bpfsup/bpfsup/internal/fastio"
	"github.com/bpfsup/bpfsup/internal/quiesce"
	"github.com/bpfsup/bpfsup/supervisor/spawn"

	"github.com/oklog/run"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/handoff"
)

// envReexec carries reexecState from the old program to the new one.
const envReexec = "BPFSUP_REEXEC_STATE"

// reexecCheckTimeout bounds the check that the new binary runs at all.
const reexecCheckTimeout = 10 * time.Second

// selfPath is the binary bpfsup was started from, resolved at startup: a
// new version installed at that path (by rename, as package managers do) is
// what a re-exec runs. /proc/self/exe would name the old, replaced inode.
var selfPath = resolveSelf()

func init() {
	if os.Getenv(envReexec) != "" {
		// The child adopted across the exec has this, the main thread, as
		// its parent thread: keep main (and Run) on it. See the top.
		runtime.LockOSThread()
		nameThreads()
	}
}

// nameThreads names the program's threads after its binary again: exec'd
// as /proc/self/fd/N (see execFile), the kernel named them "N", which ps,
// top, pgrep and journald's _COMM would show.
func nameThreads() {
	if len(os.Args) == 0 {
		return
	}
	name := filepath.Base(os.Args[0])
	if len(name) > 15 { // TASK_COMM_LEN, with its NUL
		name = name[:15]
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return
	}
	for _, t := range tasks {
		_ = os.WriteFile("/proc/self/task/"+t.Name()+"/comm", []byte(name), 0)
	}
}

func resolveSelf() string {
	if len(os.Args) == 0 || os.Args[0] == "" {
		return ""
	}
	p := os.Args[0]
	if !strings.Contains(p, "/") {
		lp, err := exec.LookPath(p)
		if err != nil {
			return ""
		}
		p = lp
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return ""
	}
	return abs
}

// reexecState is what the new program needs to carry on.
type reexecState struct {
	// From is the version that re-executed.
	From string `json:"from"`
	// Started is when the supervisor (this pid) first started.
	Started time.Time `json:"started"`
	// ChildPID is the running child, 0 when none runs.
	ChildPID     int       `json:"child_pid,omitempty"`
	ChildStarted time.Time `json:"child_started"`
	Restarts     int       `json:"restarts"`
	// Ready: READY=1 went to systemd.
	Ready bool `json:"ready"`
	// LockFDs are the objects' lock files, kept open across the exec so
	// that no other supervisor can take an object in between. The new
	// program closes them just before it locks the objects again.
	LockFDs []int `json:"lock_fds,omitempty"`
	// Sockets are the listening sockets kept open across the exec, by
	// what they serve (sockControl, sockNotify, sockMetrics): a `bpfsup
	// reload`, a notification from the child or a scrape that comes
	// meanwhile waits in its socket for the new program, and the child's
	// NOTIFY_SOCKET still names a socket that someone reads.
	Sockets map[string]int `json:"sockets,omitempty"`
	// Reloads is what the reload metrics said.
	Reloads *reloadTally `json:"reloads,omitempty"`
	// FDStore is what systemd's fd store holds (ids by name), when bpfsup
	// keeps its objects there.
	FDStore map[string]uint32 `json:"fd_store,omitempty"`
}

// ReexecProtocol is what this build takes over from the program before a
// re-exec: 1, the child and the object locks; 2, also the listening sockets
// (and the reload metrics). `bpfsup debug reexec-protocol` prints it, so that
// a program about to exec a binary knows what to hand over: a build from
// before 2 would leave the sockets open and unused, and then fail to listen
// on the metrics port the inherited socket still holds; 3, also the locks on
// the objects' pin directories (a build before 3 would keep them open and
// locked, and a later build in the same process could not lock them again).
const ReexecProtocol = 3

// reexecProtocolOf asks the binary for its ReexecProtocol; a build that has
// none (its `debug` prints its help) is 1.
func reexecProtocolOf(bin *execFile) int {
	ctx, cancel := context.WithTimeout(context.Background(), reexecCheckTimeout)
	defer cancel()
	out, err := bin.command(ctx, "debug", "reexec-protocol").Output()
	if err != nil {
		return 1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil || n < 1 {
		return 1
	}
	return n
}

// execFile is a binary held open from its checks to its exec, so that what
// is exec'd is the file that was checked: a package manager may install
// another build at its path meanwhile (the checks and the sockets' quiet
// take seconds at worst), and an older one would be handed what it does
// not take.
type execFile struct {
	path string   // what it was opened as; argv[0]
	file *os.File // nil for a script, which is run by its path
	run  string   // what to exec: /proc/self/fd/N, or path for a script
}

// openExec opens the binary at path for execFile.
func openExec(path string) (*execFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	// The kernel runs a script's interpreter on the script's path, which
	// the close-on-exec fd no longer has by then: run a script by path.
	magic := make([]byte, 2)
	if n, _ := f.ReadAt(magic, 0); n == 2 && string(magic) == "#!" {
		f.Close()
		return &execFile{path: path, run: path}, nil
	}
	return &execFile{path: path, file: f, run: "/proc/self/fd/" + strconv.Itoa(int(f.Fd()))}, nil
}

// command runs the file with args, named by its path.
func (b *execFile) command(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, b.run, args...)
	cmd.Args[0] = b.path
	return cmd
}

func (b *execFile) Close() error {
	if b.file == nil {
		return nil
	}
	return b.file.Close()
}

// The listening sockets a re-exec hands over.
const (
	sockControl = "control"
	sockNotify  = "notify"
	sockMetrics = "metrics"
)

// upgrade is the loop's state for reloads and self-upgrades.
type upgrade struct {
	watch *watcher
	// forUpgrade: the next start of the child restarts it for an upgrade,
	// which the start limit does not count.
	forUpgrade bool
	// resumed is the state handed over by the program before the exec.
	resumed *reexecState
	// adopted is the child adopted across an exec, and main runs functions
	// on the main thread, its parent thread.
	adopted *spawn.Process
	main    *mainThread
}

// prepareResume takes the state an earlier program handed over, if any, and
// releases its locks so that the install can take them again. Run calls it
// before installing, on the goroutine that called Run.
func (s *supervisor) prepareResume() {
	data, ok := os.LookupEnv(envReexec)
	if !ok {
		return
	}
	os.Unsetenv(envReexec) // not for the child
	var st reexecState
	if err := json.Unmarshal([]byte(data), &st); err != nil {
		s.log.Error("ignoring the state handed over across the re-exec", "err", err)
		return
	}
	for _, fd := range st.LockFDs {
		// A lock file, or an object's pin directory.
		var fst unix.Stat_t
		target, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
		if err == nil && (strings.HasSuffix(target, ".lock") || (unix.Fstat(fd, &fst) == nil && fst.Mode&unix.S_IFMT == unix.S_IFDIR)) {
			unix.Close(fd)
		}
	}
	s.up.resumed = &st
	s.started, s.restarts, s.ready = st.Started, st.Restarts, st.Ready
	if st.ChildPID != 0 && unix.Gettid() == unix.Getpid() {
		s.up.main = &mainThread{calls: make(chan func())}
	}
	s.log.Info("re-executed", "from", st.From, "to", s.opts.Version, "child", st.ChildPID)
}

// resumeChild adopts the child handed over across the exec, and reports
// whether there was one.
func (s *supervisor) resumeChild() bool {
	st := s.up.resumed
	if st == nil || st.ChildPID == 0 {
		return false
	}
	pid := st.ChildPID
	if ppid, ok := procPPid(pid); !ok || ppid != os.Getpid() {
		s.log.Warn("the child from before the re-exec is gone; starting a new one", "pid", pid)
		return false
	}
	proc, err := os.FindProcess(pid)
	if err != nil {
		s.log.Warn("cannot adopt the child from before the re-exec; starting a new one", "pid", pid, "err", err)
		return false
	}
	done := make(chan *os.ProcessState, 1)
	go func() {
		// Still our child after execve: wait4 (through a pidfd) reaps it.
		ps, err := proc.Wait()
		if err != nil {
			s.log.Error("cannot wait for the child adopted across the re-exec", "pid", pid, "err", err)
			return
		}
		done <- ps
	}()
	p := &spawn.Process{Pid: pid, Done: done}
	s.child, s.childStarted, s.up.adopted = p, st.ChildStarted, p
	s.childPID.Store(int32(p.Pid))
	if s.up.main == nil {
		s.log.Warn("not on the main thread, the adopted child's parent thread: SIGUSR2 will refuse to re-exec until the child is restarted", "pid", pid)
	}
	if s.metrics != nil {
		s.metrics.childUp.Set(1)
	}
	s.log.Info("adopted the running child", "pid", pid)
	s.recordSupervisor()
	return true
}

// procPPid reads the parent pid of pid, false when pid is gone.
func procPPid(pid int) (int, bool) {
	v, ok := fastio.StatusField(strconv.Itoa(pid), "PPid")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	return n, err == nil
}

// runGroup runs g, serving the main thread meanwhile when an adopted child
// needs it.
func (s *supervisor) runGroup(g *run.Group) error {
	if s.up.main == nil {
		return g.Run()
	}
	return s.up.main.serve(g.Run)
}

// reexec replaces the running program by the binary at selfPath, keeping the
// pid, the child, the pins and the object locks. It returns only when it
// did not happen, with the reason.
func (s *supervisor) reexec() error {
	if s.stopping || s.restartNow {
		return errors.New("re-exec: the child is being stopped; try again once it is back")
	}
	path := selfPath
	if path == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("re-exec: find own binary: %w", err)
		}
		path = exe
	}
	bin, err := openExec(path)
	if err != nil {
		return fmt.Errorf("re-exec: %w", err)
	}
	defer bin.Close()
	// Once exec'd there is no way back: make sure the binary runs at all.
	ctx, cancel := context.WithTimeout(context.Background(), reexecCheckTimeout)
	out, err := bin.command(ctx, "version").Output()
	cancel()
	if err != nil {
		return fmt.Errorf("re-exec: %s version: %w", path, err)
	}
	newVersion := strings.TrimSpace(string(out))
	protocol := reexecProtocolOf(bin)
	if s.child != nil && s.child == s.up.adopted && s.up.main == nil {
		return errors.New("re-exec: the adopted child's parent thread (the main thread) is not available; restart the child first")
	}

	// Quiet the sockets before the state is taken: what they bring
	// meanwhile (the child's READY=1) is then in it.
	s.quiesceSockets()
	err = s.execSelf(bin, newVersion, protocol)
	s.resumeSockets()
	return err
}

// execSelf execs bin with this program's state; it returns only when the
// exec did not happen, with the reason.
func (s *supervisor) execSelf(bin *execFile, newVersion string, protocol int) error {
	path := bin.path
	st := reexecState{From: s.opts.Version, Started: s.started, Restarts: s.restarts, Ready: s.ready, LockFDs: s.lockFDs(protocol >= 3)}
	if protocol >= 2 {
		st.Sockets = s.listeningSockets()
	}
	if s.child != nil {
		st.ChildPID, st.ChildStarted = s.child.Pid, s.childStarted
	}
	if s.metrics != nil {
		st.Reloads = &s.metrics.tally
	}
	if s.fdStore != nil {
		st.FDStore = s.fdStore.keep.Holds()
	}
	data, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("re-exec: %w", err)
	}
	env := environ.Without(os.Environ(), envReexec, handoff.EnvListenFDs, handoff.EnvListenPID, handoff.EnvListenFDNames)
	env = append(env, envReexec+"="+string(data))
	keep := append([]int(nil), st.LockFDs...)
	for _, fd := range st.Sockets {
		keep = append(keep, fd)
	}
	if n := len(s.opts.Inherited); n > 0 {
		// Socket-activated fds are where systemd put them (3 on) and go to
		// the new program the way they came to this one.
		names := make([]string, n)
		for i, f := range s.opts.Inherited {
			names[i] = f.Name
			keep = append(keep, int(f.File.Fd()))
		}
		env = append(env, handoff.EnvListenFDs+"="+strconv.Itoa(n), handoff.EnvListenPID+"="+strconv.Itoa(os.Getpid()),
			handoff.EnvListenFDNames+"="+strings.Join(names, ":"))
	}
	for _, fd := range keep {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			setCloseOnExec(keep)
			return fmt.Errorf("re-exec: keep fd %d open: %w", fd, err)
		}
	}
	argv := append([]string{path}, os.Args[1:]...)
	s.log.Info("re-executing bpfsup", "path", path, "from", s.opts.Version, "to", newVersion, "protocol", protocol, "child", st.ChildPID, "locks_kept", len(st.LockFDs), "sockets_kept", len(st.Sockets))

	var execErr error
	do := func() { execErr = syscall.Exec(bin.run, argv, env) } // returns only on failure
	switch s.child {
	case nil:
		do()
	case s.up.adopted:
		s.up.main.do(do)
	default:
		if err := s.child.OnForkThread(do); err != nil {
			execErr = fmt.Errorf("run on the child's parent thread: %w", err)
		}
	}
	setCloseOnExec(keep)
	return fmt.Errorf("re-exec %s: %w", path, execErr)
}

// quiesceSockets gets the sockets ready to be handed over: no connection
// taken and not answered, no notification read and not acted on, is lost
// to the exec. What comes after waits in the sockets.
func (s *supervisor) quiesceSockets() {
	// The child's notifications first: once its reader holds, nothing more
	// comes into childNote, which is drained here (nobody else reads it
	// while the loop is busy with this).
	if s.notify != nil {
		held := make(chan struct{})
		go func() {
			s.notify.p.Pause(quiesce.Timeout)
			close(held)
		}()
		for held != nil {
			select {
			case msg := <-s.childNote:
				s.childNotified(msg)
			case <-held:
				held = nil
			}
		}
		for drained := false; !drained; {
			select {
			case msg := <-s.childNote:
				s.childNotified(msg)
			default:
				drained = true
			}
		}
	}
	if s.ctl != nil {
		s.ctl.quiesce()
	}
	if s.metricsSrv != nil {
		s.metricsSrv.Quiesce()
	}
}

// resumeSockets serves again after a re-exec that did not happen.
func (s *supervisor) resumeSockets() {
	if s.ctl != nil {
		s.ctl.resume()
	}
	if s.metricsSrv != nil {
		s.metricsSrv.Resume()
	}
	if s.notify != nil {
		s.notify.p.Resume()
	}
}

// listeningSockets finds the fds of the sockets bpfsup listens on, for the
// program after the exec.
func (s *supervisor) listeningSockets() map[string]int {
	socks := map[string]int{}
	add := func(name string, l any) {
		c, ok := l.(syscall.Conn)
		if !ok {
			return
		}
		raw, err := c.SyscallConn()
		if err != nil {
			return
		}
		_ = raw.Control(func(fd uintptr) { socks[name] = int(fd) })
	}
	if s.ctl != nil {
		add(sockControl, s.ctl.l.DeadlineListener)
	}
	if s.notify != nil {
		add(sockNotify, s.notify.conn)
	}
	if s.metricsSrv != nil {
		add(sockMetrics, s.metricsSrv.Listener())
	}
	return socks
}

// inheritedSocket takes the socket the program before the exec handed over
// for name, or returns nil when there is none.
func (s *supervisor) inheritedSocket(name string) *os.File {
	st := s.up.resumed
	if st == nil {
		return nil
	}
	fd, ok := st.Sockets[name]
	if !ok {
		return nil
	}
	delete(st.Sockets, name)
	if _, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil {
		s.log.Warn("the socket handed over across the re-exec is not one; listening anew", "socket", name, "fd", fd, "err", err)
		return nil
	}
	unix.CloseOnExec(fd)
	return os.NewFile(uintptr(fd), name)
}

// closeUnclaimedSockets closes the sockets handed over that this program
// has no use for.
func (s *supervisor) closeUnclaimedSockets() {
	if s.up.resumed == nil {
		return
	}
	for name := range s.up.resumed.Sockets {
		if f := s.inheritedSocket(name); f != nil {
			f.Close()
		}
	}
}

func setCloseOnExec(fds []int) {
	for _, fd := range fds {
		unix.CloseOnExec(fd)
	}
}

// lockFDs finds the fds of the objects' locks: their lock files, and their
// pin directories when withDirs.
func (s *supervisor) lockFDs(withDirs bool) []int {
	want := map[string]bool{}
	for _, in := range s.objects {
		paths := []string{s.opts.Store.LockPath(in.Name())}
		if withDirs {
			paths = append(paths, s.opts.Store.ObjectDir(in.Name()))
		}
		for _, path := range paths {
			if p, err := filepath.Abs(path); err == nil {
				want[p] = true
			}
		}
	}
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil
	}
	var fds []int
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && want[target] {
			fds = append(fds, fd)
		}
	}
	return fds
}

// mainThread runs functions on the main thread, for a goroutine locked to
// it that serves them.
type mainThread struct {
	calls chan func()
}

// do runs fn on the main thread and returns when it has returned.
func (m *mainThread) do(fn func()) {
	done := make(chan struct{})
	m.calls <- func() { defer close(done); fn() }
	<-done
}

// serve runs run on another goroutine and serves do until run returns.
func (m *mainThread) serve(run func() error) error {
	errc := make(chan error, 1)
	go func() { errc <- run() }()
	for {
		select {
		case fn := <-m.calls:
			fn()
		case err := <-errc:
			return err
		}
	}
}
