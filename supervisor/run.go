package supervisor

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/oklog/run"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/config"
	"github.com/bpfsup/bpfsup/control"
	"github.com/bpfsup/bpfsup/converge"
	"github.com/bpfsup/bpfsup/handoff"
	"github.com/bpfsup/bpfsup/internal/environ"
	"github.com/bpfsup/bpfsup/internal/scrape"
	"github.com/bpfsup/bpfsup/pinstore"
	"github.com/bpfsup/bpfsup/supervisor/spawn"
)

// Options is everything a run needs.
type Options struct {
	// Store is the pin root and state directory.
	Store pinstore.Store
	// Objects to install, in order.
	Objects []config.Object
	// Netns is the default network namespace of network hooks (a path).
	Netns string
	// Command is the application; required.
	Command []string
	// ExecHelper starts the application (spawn.Child.Helper): "", the
	// default, lets spawn choose.
	ExecHelper string
	// Restart is the restart policy; see DefaultRestartPolicy.
	Restart RestartPolicy
	// StopTimeout is how long a stopping child has between the stop signal
	// and SIGKILL (default 10s).
	StopTimeout time.Duration
	// Credential runs the child as another user.
	Credential *spawn.Credential
	// NotifyChild gives the child its own notify socket; READY=1 goes to
	// systemd when the child sends it, not when it starts.
	NotifyChild bool
	// NotifyAccess is whose messages that socket takes: config.NotifyAccessMain
	// (the child alone; the default) or config.NotifyAccessAll (it and its
	// descendants).
	NotifyAccess config.NotifyAccess
	// MetricsAddr serves Prometheus metrics on HOST:PORT when set.
	MetricsAddr string
	// OnUpgrade is what happens to the child after a reload that changed
	// something: restarted (the zero value), left running, or signalled.
	OnUpgrade config.OnUpgrade
	// Force replaces foreign pins found at bpfsup's paths.
	Force bool
	// EnforceOrder moves links on ordered hooks (tcx, netkit) back to their
	// configured place when something else took it.
	EnforceOrder bool
	// Watch reloads when an object file or the config changes.
	Watch bool
	// WatchFiles are extra files to watch (the config file).
	WatchFiles []string
	// Reconfigure, when set, is called on reload to read the configuration
	// anew (the config file may have changed); nil keeps Objects.
	Reconfigure func() ([]config.Object, error)
	// Inherited are fds bpfsup received by socket activation; they go to the
	// child first, with their names. Those that systemd handed back from its
	// fd store are bpfsup's own and never go to the child.
	Inherited []handoff.NamedFile
	// FDStore keeps every object in systemd's file descriptor store too
	// (supervisor/fdstore.go); an error when bpfsup runs outside systemd.
	FDStore bool
	// PrivatePins says that the pin root is on a bpffs of bpfsup's own, in a
	// mount namespace of its own (pins = false; see EnterPrivateBPFFS): the
	// objects outlive bpfsup in the fd store alone.
	PrivatePins bool
	// ProgramStats holds a BPF_ENABLE_STATS fd (run time) for as long as
	// bpfsup runs: the kernel counts every program's runs and run time
	// while it is open, and stops when bpfsup exits, however it exits. The
	// metrics then carry each program's statistics.
	ProgramStats bool
	// Logger; slog.Default() when nil.
	Logger *slog.Logger
	// Version of bpfsup, for status.
	Version string
	// ChildStdout and ChildStderr; bpfsup's own when nil.
	ChildStdout, ChildStderr *os.File
}

// ErrStartLimit means the child was started too often; bpfsup gave up.
var ErrStartLimit = errors.New("start limit hit")

type supervisor struct {
	// planKey is converge.PlannerKey's: what plans depend on besides the
	// objects.
	planKey string
	opts    Options
	log     *slog.Logger
	objects []*converge.Installed
	files   []handoff.NamedFile // BPF fds for the child, owned

	child    *spawn.Process
	released bool // releaseMemory ran after the first child start
	// runtimeKey names the supervisor's record in the state directory
	// (pinstore.WriteRuntime); runtimeWritten says there is one to remove.
	runtimeKey     pinstore.RuntimeKey
	runtimeWritten bool
	childPID       childPIDs // the child's pid for the notify socket
	childStarted   time.Time
	lastExit       *os.ProcessState
	restarts       int
	backoff        *backoff
	stopping       bool
	stoppingSent   bool // STOPPING=1 went to systemd
	restartNow     bool // the child was stopped by a reload: start it again at once
	ready          bool
	restartTimer   *time.Timer
	killTimer      *time.Timer
	metrics        *metrics
	started        time.Time

	runtime atomic.Pointer[[]byte] // JSON of SupervisorRecord, for the control socket

	reloads    chan reloadRequest
	childNote  chan notifyMsg
	notify     *notifySocket
	ctl        *controlServer
	metricsSrv *scrape.Server
	// stats is the BPF_ENABLE_STATS fd (Options.ProgramStats); see stats.go.
	stats   io.Closer
	fdStore *fdStore
	unit    string         // the systemd unit bpfsup runs in, if any
	ifaces  *ifaceWatcher  // re-attaches hooks whose interface came back; see ifaces.go
	cgroups *cgroupWatcher // re-attaches defunct cgroup links; see cgroups.go
	mounts  *mountWatcher  // network namespaces made again, bpffs unmounted; see mounts.go
	up      upgrade        // reloads and self-upgrades; see reexec.go
}

type reloadRequest struct {
	reason string
	reply  chan error
	report *control.ReloadReport // filled in before the reply, when not nil
}

func newSupervisor(opts Options) (*supervisor, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Restart.Mode == "" {
		opts.Restart = DefaultRestartPolicy()
	}
	if err := opts.Restart.Check(); err != nil {
		return nil, err
	}
	if opts.StopTimeout < 0 {
		return nil, fmt.Errorf("stop timeout %s: must not be negative", opts.StopTimeout)
	}
	if opts.StopTimeout == 0 {
		opts.StopTimeout = 10 * time.Second
	}
	if opts.OnUpgrade.Action == "" {
		opts.OnUpgrade.Action = config.UpgradeRestart
	}
	return &supervisor{
		opts:       opts,
		log:        opts.Logger,
		backoff:    newBackoff(opts.Restart),
		reloads:    make(chan reloadRequest),
		childNote:  make(chan notifyMsg, 16),
		started:    time.Now(),
		planKey:    converge.PlannerKey(opts.Version, opts.Netns),
		runtimeKey: pinstore.SelfRuntimeKey(),
	}, nil
}

func (s *supervisor) close() {
	if s.runtimeWritten {
		s.opts.Store.RemoveRuntime(s.runtimeKey)
	}
	s.closeFiles()
	for _, in := range s.objects {
		in.Close()
	}
	s.objects = nil
}

func (s *supervisor) closeFiles() {
	for _, f := range s.files {
		f.File.Close()
	}
	s.files = nil
}

// planOptions are what the plans of the run depend on besides the objects.
func (s *supervisor) planOptions() converge.PlanOptions {
	return converge.PlanOptions{Netns: s.opts.Netns, Force: s.opts.Force, Key: s.planKey,
		Store: s.opts.Store, EnforceOrder: s.opts.EnforceOrder}
}

// openFiles builds the child's fd list: inherited sockets, then every
// object's hand-off.
func (s *supervisor) openFiles() error {
	s.closeFiles()
	handed := 0
	for _, in := range s.objects {
		handed += in.HandoffCount()
	}
	if err := ensureFDRoom(handed); err != nil {
		return err
	}
	var files []handoff.NamedFile
	for _, in := range s.objects {
		fs, err := in.HandoffFiles()
		if err != nil {
			for _, f := range files {
				f.File.Close()
			}
			return err
		}
		files = append(files, fs...)
	}
	s.files = files
	return nil
}

// Run installs the objects, starts the child and supervises it until it
// exits for good or bpfsup is stopped. It returns the exit status bpfsup
// should exit with: the child's (128+signal when a signal killed it). The
// pins stay whatever happens.
func Run(ctx context.Context, opts Options) (int, error) {
	s, err := newSupervisor(opts)
	if err != nil {
		return 2, err
	}
	if len(opts.Command) == 0 {
		return 2, errors.New("no command to run (bpfsup run ... -- CMD [ARG...])")
	}
	// Say so now rather than after installing, and rather than through a
	// child that exits 127 until the start limit.
	if _, err := exec.LookPath(opts.Command[0]); err != nil && !errors.Is(err, exec.ErrDot) {
		return 2, fmt.Errorf("command: %w", err)
	}
	defer s.close()

	// Grandchildren that lose their parent are reparented to us and reaped.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		s.log.Warn("cannot become child subreaper", "err", err)
	}

	// Caught from here on, so that a stop during a long install (the
	// verifier may take seconds) lets the install finish and then stops
	// before the child starts, instead of killing bpfsup half-way.
	sigc := make(chan os.Signal, 16)
	signal.Notify(sigc, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH, syscall.SIGCHLD)
	defer signal.Stop(sigc)

	s.prepareResume()
	// Every argument is checked before anything is pinned or attached: a
	// metrics address that cannot be listened on is one, an fd store
	// outside systemd another.
	if err := s.openFDStore(); err != nil {
		return 2, err
	}
	if err := s.enableStats(); err != nil {
		return 1, err
	}
	defer s.closeStats()
	metricsL, err := s.metricsListener()
	if err != nil {
		return 2, err
	}
	defer func() {
		if s.metricsSrv == nil && metricsL != nil {
			metricsL.Close()
		}
	}()
	if err := s.install(); err != nil {
		return 1, err
	}

	var g run.Group
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer s.closeWatchers()
	if err := s.addActors(&g, metricsL); err != nil {
		return 1, err
	}

	exitCode := 0
	g.Add(func() error {
		var err error
		exitCode, err = s.loop(ctx, sigc)
		return err
	}, func(error) { cancel() })

	err = s.runGroup(&g)
	if errors.Is(err, errLoopDone) {
		err = nil
	}
	if s.lastExit != nil {
		// What the last child left in its process group would be orphaned
		// to init: end it, as systemd's KillMode=mixed does. ESRCH when
		// nothing is left; the group's id cannot be reused while it has
		// members.
		_ = unix.Kill(-s.lastExit.Pid(), unix.SIGKILL)
	}
	s.notifyStopping()
	return exitCode, err
}

// metricsListener listens on the metrics address, if any: taken over from
// the bpfsup this one re-executed from, or new.
func (s *supervisor) metricsListener() (net.Listener, error) {
	if s.opts.MetricsAddr == "" {
		return nil, nil
	}
	return listenMetrics(s.opts.MetricsAddr, s.inheritedSocket(sockMetrics))
}

// install brings the objects to their configuration, opens the files handed
// to the child and sets up the metrics, carrying what a re-exec handed over.
func (s *supervisor) install() error {
	if err := s.restoreFromStore(); err != nil {
		return err
	}
	var err error
	if s.objects, err = converge.Install(s.opts.Store, s.opts.Objects, s.planOptions(), s.log); err != nil {
		return err
	}
	s.opts.Store.RemoveDeadRuntimes(s.runtimeKey)
	if err := s.syncFDStore(); err != nil {
		return err
	}
	if err := s.openFiles(); err != nil {
		return err
	}
	var carried *reloadTally
	if s.up.resumed != nil {
		carried = s.up.resumed.Reloads
	}
	s.metrics = newMetrics(carried, s.stats != nil)
	s.metrics.restarts.Add(float64(s.restarts)) // those before a re-exec
	s.updateMetrics()
	return nil
}

// addActors adds to g what runs beside the loop: the notify socket, the
// metrics and control servers, and the watchers of interfaces, cgroups,
// the mount table and the configured files. Those that listen take over
// the sockets of the bpfsup this one re-executed from.
func (s *supervisor) addActors(g *run.Group, metricsL net.Listener) error {
	opts := s.opts
	if opts.NotifyChild {
		var childUID *uint32
		if opts.Credential != nil {
			childUID = &opts.Credential.UID
		}
		all := opts.NotifyAccess == config.NotifyAccessAll
		allow := func(pid int32) bool { return mayNotify(pid, s.childPID.Load(), all) }
		ns, err := listenNotify(s.childNote, childUID, allow, s.log, s.inheritedSocket(sockNotify))
		if err != nil {
			return err
		}
		s.notify = ns
		g.Add(ns.serve, func(error) { ns.close() })
	}
	if metricsL != nil {
		srv := scrape.New(&s.metrics.reg, metricsL.(*net.TCPListener))
		s.metricsSrv = srv
		g.Add(srv.Serve, func(error) { srv.Close() })
		s.log.Info("serving metrics", "addr", srv.Addr())
	}
	ctl, err := listenControl(opts.Store.StateDirectory(), s.reloads, s.statusJSON, s.inheritedSocket(sockControl))
	if err != nil {
		return err
	}
	s.ctl = ctl
	s.closeUnclaimedSockets()
	g.Add(ctl.serve, func(error) { ctl.close() })
	if err := s.watchInterfaces(); err != nil {
		return err
	}
	if s.ifaces != nil {
		g.Add(s.ifaces.run, func(error) { s.ifaces.close() })
	}
	if err := s.watchCgroups(); err != nil {
		return err
	}
	if mw, err := newMountWatcher(); err != nil {
		s.log.Warn("cannot watch the mount table: a network namespace made again, or bpffs unmounted, goes unnoticed", "err", err)
	} else {
		s.mounts = mw
		g.Add(mw.run, func(error) { mw.close() })
	}
	if opts.Watch {
		w, err := newWatcher(s.watchedFiles(), s.reloads, s.log)
		if err != nil {
			return err
		}
		g.Add(w.run, func(error) { w.close() })
		s.up.watch = w
	}
	return nil
}

// closeWatchers stops the watchers of interfaces, cgroups and the mount
// table, whether or not their actors ran.
func (s *supervisor) closeWatchers() {
	if s.ifaces != nil {
		s.ifaces.close()
	}
	if s.cgroups != nil {
		s.cgroups.close()
	}
	if s.mounts != nil {
		s.mounts.close()
	}
}

// notifyStopping tells systemd, once, that bpfsup is going away.
func (s *supervisor) notifyStopping() {
	if !s.stoppingSent {
		s.stoppingSent = true
		_, _ = daemon.SdNotify(false, "STOPPING=1")
	}
}

var errLoopDone = errors.New("supervisor done")

// loop owns the state. It returns the exit status and errLoopDone (or the
// error that ended it), so that the group stops the other actors.
func (s *supervisor) loop(ctx context.Context, sigc <-chan os.Signal) (int, error) {
	s.restartTimer, s.killTimer = stoppedTimer(), stoppedTimer()
	restartTimer, killTimer := s.restartTimer, s.killTimer
	var watchdog <-chan time.Time
	if d, err := daemon.SdWatchdogEnabled(false); err == nil && d > 0 {
		t := time.NewTicker(d / 2)
		defer t.Stop()
		watchdog = t.C
	}

	orderTick, stopOrderTick := s.orderChecks()
	defer stopOrderTick()

	if !s.resumeChild() {
		if s.stoppedDuringInstall(sigc) {
			return 0, errLoopDone
		}
		if err := s.startChild(); err != nil {
			return 1, err
		}
	}
	s.notifyStatus()

	for {
		var done <-chan *os.ProcessState
		if s.child != nil {
			done = s.child.Done
		}
		select {
		case <-ctx.Done():
			if s.child == nil {
				return ExitCode(s.lastExit), errLoopDone
			}
			if !s.stopping {
				s.stop(syscall.SIGTERM, killTimer)
			}

		case st := <-done:
			if code, end, err := s.childExited(st); end {
				return code, err
			}

		case <-restartTimer.C:
			if s.stopping || s.child != nil {
				continue
			}
			if err := s.restartChild(); err != nil {
				return 1, err
			}

		case <-killTimer.C:
			if s.child != nil {
				s.log.Warn("child did not stop in time, killing it", "pid", s.child.Pid, "timeout", s.opts.StopTimeout)
				// Its whole process group, as systemd's KillMode=mixed
				// does after the timeout.
				if unix.Kill(-s.child.Pid, unix.SIGKILL) != nil {
					_ = unix.Kill(s.child.Pid, unix.SIGKILL)
				}
			}

		case sig := <-sigc:
			if s.signalled(sig.(syscall.Signal)) {
				return ExitCode(s.lastExit), errLoopDone
			}

		case req := <-s.reloads:
			s.handleReload(req)
			s.logSyncFDStore()
			if err := s.watchInterfaces(); err != nil {
				s.log.Error("cannot watch interfaces", "err", err)
			}
			if err := s.watchCgroups(); err != nil {
				s.log.Error("cannot watch cgroups", "err", err)
			}

		case ev := <-s.ifaceEvents():
			s.reattachIface(ev)
			s.logSyncFDStore()

		case ev := <-s.cgroupEvents():
			s.recgroup(ev)
			s.logSyncFDStore()

		case <-s.mountEvents():
			s.checkMounts()
			s.logSyncFDStore()

		case <-orderTick:
			if converge.CheckOrder(s.objects, true, s.log) {
				s.logSyncFDStore()
			}

		case msg := <-s.childNote:
			s.childNotified(msg)

		case <-watchdog:
			// STOPPING=1 was the last word to the service manager.
			if !s.stopping {
				_, _ = daemon.SdNotify(false, "WATCHDOG=1")
			}
		}
	}
}

// childExited handles the exit of the child: the end of the supervision
// when bpfsup is stopping or the restart policy says so, else a restart, at
// once or after the backoff. end says whether the loop returns code and err.
func (s *supervisor) childExited(st *os.ProcessState) (code int, end bool, err error) {
	s.child = nil
	s.childPID.Store(0)
	s.lastExit = st
	ran := time.Since(s.childStarted)
	s.metrics.childUp.Set(0)
	code = ExitCode(st)
	s.log.Info("child exited", "status", st.String(), "ran", ran.Round(time.Millisecond))
	switch {
	case s.stopping:
		s.reap()
		s.killTimer.Stop()
		return code, true, errLoopDone
	case s.restartNow:
		s.reap()
		s.restartNow = false
		s.killTimer.Stop()
		s.restartTimer.Reset(0)
		return 0, false, nil
	case !s.opts.Restart.ShouldRestart(st):
		s.reap()
		s.log.Info("not restarting the child", "restart", s.opts.Restart.Mode, "exit_code", code)
		return code, true, errLoopDone
	}
	d := s.backoff.delay(ran)
	s.log.Info("restarting child", "in", d)
	if d == 0 {
		// At once, without a trip through the timer; orphans left by the
		// child are reaped once the next one runs.
		if err := s.restartChild(); err != nil {
			return 1, true, err
		}
		s.reap()
		return 0, false, nil
	}
	s.reap()
	s.restartTimer.Reset(d)
	s.notifyStatus()
	return 0, false, nil
}

// signalled handles a signal to bpfsup: SIGCHLD reaps, SIGTERM and SIGINT
// stop the child, SIGHUP reloads, SIGUSR2 re-executes bpfsup, the rest are
// passed on to the child. It says whether the loop ends, which it does
// when bpfsup is told to stop with no child running.
func (s *supervisor) signalled(sig syscall.Signal) bool {
	switch sig {
	case syscall.SIGCHLD:
		s.reap()
	case syscall.SIGTERM, syscall.SIGINT:
		if s.child == nil {
			s.log.Info("stopping", "signal", sig.String())
			return true
		}
		s.stop(sig, s.killTimer)
	case syscall.SIGHUP:
		s.requestReload("SIGHUP")
	case syscall.SIGUSR2:
		if err := s.reexec(); err != nil {
			s.log.Error("self-upgrade failed; carrying on as before", "err", err)
		}
	default:
		if s.child != nil {
			_ = unix.Kill(s.child.Pid, sig)
		}
	}
	return false
}

// restartChild starts the child again, counting the restart; an error ends
// the supervision (the start limit, or a start that failed).
func (s *supervisor) restartChild() error {
	// Counted before the start, so that the manifest the start writes
	// (status) has it.
	s.restarts++
	if err := s.startChild(); err != nil {
		s.restarts--
		s.metrics.childUp.Set(0)
		if errors.Is(err, ErrStartLimit) {
			s.metrics.startLimitHits.Inc()
			s.log.Error("start limit hit, giving up; the BPF programs stay attached",
				"start_limit", s.opts.Restart.StartLimit, "start_limit_interval", s.opts.Restart.StartLimitInterval,
				"last_exit", s.lastExit.String())
		}
		return err
	}
	s.metrics.restarts.Inc()
	s.notifyStatus()
	return nil
}

// stoppedDuringInstall takes the signals that came while bpfsup installed,
// before any child ran, and reports whether one of them was a stop: then no
// child is started at all. A SIGHUP becomes a reload, and a SIGUSR2 (self
// upgrade) is raised again for the loop; the others had no child to go to.
func (s *supervisor) stoppedDuringInstall(sigc <-chan os.Signal) bool {
	usr2 := false
	for {
		select {
		case sig := <-sigc:
			switch sig {
			case syscall.SIGTERM, syscall.SIGINT:
				s.log.Info("stopping before the child started", "signal", sig.String())
				return true
			case syscall.SIGHUP:
				s.requestReload("SIGHUP")
			case syscall.SIGUSR2:
				usr2 = true
			}
		default:
			if usr2 {
				_ = unix.Kill(os.Getpid(), unix.SIGUSR2)
			}
			return false
		}
	}
}

// requestReload asks the loop for a reload without waiting for it: the loop
// itself may be the caller.
func (s *supervisor) requestReload(reason string) {
	go func() {
		reply := make(chan error, 1)
		s.reloads <- reloadRequest{reason: reason, reply: reply}
		<-reply
	}()
}

func stoppedTimer() *time.Timer {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}

// stop forwards the stop signal and arms the SIGKILL timeout.
func (s *supervisor) stop(sig syscall.Signal, killTimer *time.Timer) {
	if s.stopping {
		_ = unix.Kill(s.child.Pid, sig)
		return
	}
	s.stopping = true
	s.notifyStopping()
	s.log.Info("stopping child", "pid", s.child.Pid, "signal", sig.String(), "timeout", s.opts.StopTimeout)
	_ = unix.Kill(s.child.Pid, sig)
	killTimer.Reset(s.opts.StopTimeout)
}

func (s *supervisor) startChild() error {
	now := time.Now()
	forUpgrade := s.up.forUpgrade
	s.up.forUpgrade = false
	if !forUpgrade && !s.backoff.started(now) {
		p := s.opts.Restart
		return fmt.Errorf("%w: the child exited %d times within %s (limit: %d starts in %s, see --start-limit and --start-limit-interval), last with %s; giving up, the BPF programs stay attached",
			ErrStartLimit, p.StartLimit, p.StartLimitInterval, p.StartLimit, p.StartLimitInterval, s.lastExit)
	}
	files := append(append([]handoff.NamedFile(nil), s.opts.Inherited...), s.files...)
	env := os.Environ()
	env = environ.Without(env, "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "FDSTORE", EnvPrivateBPFFS)
	if s.notify != nil {
		env = append(env, "NOTIFY_SOCKET="+s.notify.path)
	}
	c := spawn.Child{
		Helper:     s.opts.ExecHelper,
		Args:       s.opts.Command,
		Env:        env,
		Files:      files,
		PinRoot:    s.opts.Store.RootDir(),
		Credential: s.opts.Credential,
	}
	if s.opts.ChildStdout != nil {
		c.Stdout = s.opts.ChildStdout
	}
	if s.opts.ChildStderr != nil {
		c.Stderr = s.opts.ChildStderr
	}
	s.childPID.Starting()
	p, err := spawn.Start(c)
	if err != nil {
		s.childPID.Store(0)
		return err
	}
	s.child, s.childStarted = p, now
	s.childPID.Store(int32(p.Pid))
	s.metrics.childUp.Set(1)
	s.log.Info("child started", "pid", p.Pid, "command", s.opts.Command[0], "fds", len(files), "exec_helper", p.Helper)
	if !s.ready && s.notify == nil {
		s.ready = true
		_, _ = daemon.SdNotify(false, "READY=1")
	}
	s.recordSupervisor()
	if !s.released {
		s.released = true
		s.releaseMemory()
	}
	return nil
}

// releaseMemory gives back, in the background, what the install that the
// child now runs with needed and a supervisor that waits does not: the heap
// that parsing objects and the kernel's BTF left, which Go's scavenger
// would return only over minutes, and the kernel's BTF mapping, which
// cilium/ebpf unmaps once a collection finds it unreachable. A second
// later: the forced collection takes every CPU it can, which the child's
// own start, just begun, needs more.
func (s *supervisor) releaseMemory() {
	time.AfterFunc(releaseMemoryAfter, debug.FreeOSMemory)
}

// releaseMemoryAfter is how long after the first start of the child
// releaseMemory gives memory back.
const releaseMemoryAfter = time.Second

// childNotified handles a datagram from the child's notify socket, and
// closes the fds that came with it (see notifyMsg).
func (s *supervisor) childNotified(msg notifyMsg) {
	defer msg.close()
	for _, line := range strings.Split(msg.text, "\n") {
		switch {
		case line == "READY=1":
			if !s.ready {
				s.ready = true
				s.log.Info("child is ready")
				_, _ = daemon.SdNotify(false, "READY=1")
				s.recordSupervisor() // for status --ready
			}
		case strings.HasPrefix(line, "STATUS="):
			_, _ = daemon.SdNotify(false, "STATUS=child: "+strings.TrimPrefix(line, "STATUS="))
		case strings.HasPrefix(line, "EXTEND_TIMEOUT_USEC=") && !s.ready:
			// A slow start of the application is the service's slow start.
			_, _ = daemon.SdNotify(false, line)
		}
	}
}

func (s *supervisor) notifyStatus() {
	links, progs := 0, 0
	for _, in := range s.objects {
		_, p, l, _, _ := in.Counts()
		links += l
		progs += p
	}
	pid := "none"
	if s.child != nil {
		pid = strconv.Itoa(s.child.Pid)
	}
	_, _ = daemon.SdNotify(false, fmt.Sprintf("STATUS=objects=%d programs=%d links=%d child=%s restarts=%d",
		len(s.objects), progs, links, pid, s.restarts))
}

// recordSupervisor writes the supervisor's pid, the child's pid and the
// restart count into the supervisor's record in the state directory, for
// status; into the manifest of each object only how it is held (version,
// fd store, private pins, unit, statistics), when that changed: a restart
// of the child, or of bpfsup, writes one file, not one per object.
func (s *supervisor) recordSupervisor() {
	rec := &pinstore.SupervisorRecord{PID: os.Getpid(), Version: s.opts.Version, Started: s.started.UTC(), Restarts: s.restarts, Ready: s.ready && s.child != nil,
		FDStore: s.opts.FDStore, PrivatePins: s.opts.PrivatePins, Unit: s.unit, ProgramStats: s.stats != nil}
	if s.child != nil {
		rec.ChildPID = s.child.Pid
	}
	if b, err := json.Marshal(rec); err == nil {
		s.runtime.Store(&b)
	}
	if err := s.opts.Store.WriteRuntime(s.runtimeKey, rec); err != nil {
		s.log.Warn("could not write the supervisor's record", "err", err)
	} else {
		s.runtimeWritten = true
	}
	// What a manifest keeps says how the object is held, not by which
	// process: a start of bpfsup that changed none of it writes nothing.
	lasting := pinstore.SupervisorRecord{Version: rec.Version, FDStore: rec.FDStore, PrivatePins: rec.PrivatePins,
		Unit: rec.Unit, ProgramStats: rec.ProgramStats}
	for _, in := range s.objects {
		if err := in.RecordSupervisor(&lasting); err != nil {
			s.log.Warn("could not write manifest", "object", in.Name(), "err", err)
		}
	}
}

// reap collects zombies other than the child (which its own goroutine waits
// for): grandchildren reparented to bpfsup as subreaper. It asks the kernel
// which child exited without reaping it (waitid with WNOWAIT), and reaps it
// unless it is the child; one system call when there is nothing to reap.
// Behind the child's own zombie the others wait for the reap that follows
// its exit.
func (s *supervisor) reap() {
	for {
		var info unix.Siginfo
		if err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); err != nil {
			return // ECHILD: no children at all
		}
		pid := siginfoPID(&info)
		if pid == 0 || (s.child != nil && pid == s.child.Pid) {
			return
		}
		var ws unix.WaitStatus
		if _, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); err != nil {
			return
		}
	}
}

// siginfoPID is si_pid of a SIGCHLD's siginfo, which x/sys/unix leaves in
// the union after si_signo, si_errno and si_code: at the union's alignment,
// a pointer's (offset 16 on 64-bit, 12 on 32-bit).
func siginfoPID(info *unix.Siginfo) int {
	off := 12
	if unsafe.Sizeof(uintptr(0)) == 8 {
		off = 16
	}
	raw := (*[unsafe.Sizeof(unix.Siginfo{})]byte)(unsafe.Pointer(info))
	return int(int32(binary.NativeEndian.Uint32(raw[off : off+4])))
}

// orderCheckInterval is how often a supervisor with enforce_order checks
// the places of its links: one query of each ordered hook.
const orderCheckInterval = time.Second

// orderChecks ticks every orderCheckInterval while enforce_order is on and
// a link has a place, so that a program put in front of bpfsup's while it
// runs is moved past within that time, not only at the next reload or
// restart; nil (never ticks) otherwise.
func (s *supervisor) orderChecks() (<-chan time.Time, func()) {
	if !s.opts.EnforceOrder {
		return nil, func() {}
	}
	for _, in := range s.objects {
		if in.Placed() {
			t := time.NewTicker(orderCheckInterval)
			return t.C, t.Stop
		}
	}
	return nil, func() {}
}
