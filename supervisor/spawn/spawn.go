package spawn

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/bpfsup/bpfsup/handoff"
	"github.com/bpfsup/bpfsup/internal/environ"
	"github.com/bpfsup/bpfsup/internal/exechelper"
)

// ExecArg is the first argument that makes bpfsup the exec helper: see
// ExecHelper.
const ExecArg = exechelper.Arg

// Variables from the supervisor to the exec helper; the helper removes them.
const (
	envExecUID    = exechelper.EnvUID
	envExecGID    = exechelper.EnvGID
	envExecGroups = exechelper.EnvGroups
	envExecPPID   = exechelper.EnvPPID
)

// ShellHelper is the exec helper where the native one is not (see
// NativeHelper): a POSIX shell that exports its own pid as LISTEN_PID and
// execs the application, so that the application keeps the pid. On every
// start of the child it adds about 1.5-2.5 ms to the exec (the native helper
// about 0.5 ms), where re-executing bpfsup, a Go binary of 12 MB (its
// runtime, its threads, its pages), adds about 10-16 ms (idle 2-core VM).
// The rest of the helper's work is done by the forked child before it runs
// the shell: the change of user and the parent-death signal (Go's
// SysProcAttr), and only the handed fds are open (every other fd of the
// supervisor is close-on-exec, see Start).
const ShellHelper = "/bin/sh"

// ShellScript is ShellHelper's command; "$@" is the application.
const ShellScript = `export LISTEN_PID=$$ && exec "$@"`

// shellName is $0 of shellScript, which the shell puts before its errors
// ("bpfsup exec: 1: exec: foo: not found").
const shellName = "bpfsup exec"

// Credential is the user the child runs as.
type Credential struct {
	UID, GID uint32
	// Groups are the supplementary groups; empty clears root's.
	Groups []uint32
}

// Child describes an application to start with handed fds.
type Child struct {
	// Helper runs between the fork and the application, to set LISTEN_PID
	// to the application's pid, which is only known once forked:
	// NativeHelper, ShellHelper, or a bpfsup binary, re-executed with
	// ExecArg (see ExecHelper). When empty, NativeHelper where there is one
	// and the kernel executes it, else ShellHelper if this machine has it,
	// else the running executable.
	Helper string
	// Args is the application's command line; Args[0] is looked up in PATH.
	Args []string
	// Env is the application's environment (the protocol's variables are
	// added); the supervisor's own when nil.
	Env []string
	// Files are handed in order: entry i becomes fd 3+i, named Files[i].Name.
	// The supervisor keeps ownership; Start does not close them.
	Files []handoff.NamedFile
	// PinRoot is passed as BPFSUP_PIN_ROOT.
	PinRoot string
	// Credential, when set, is the user the application runs as. The helper
	// drops privileges itself just before exec, so it need not be executable
	// by that user.
	Credential *Credential
	// Stdout and Stderr of the application; the supervisor's when nil.
	Stdout, Stderr io.Writer
}

// Process is a started child.
type Process struct {
	// Pid is the child's pid (the helper's, which becomes the application).
	Pid int
	// Helper names the exec helper that started it: "native", "shell" or
	// "bpfsup" (see HelperNamed).
	Helper string
	// Done receives the child's wait status once, when it has exited and been
	// reaped.
	Done <-chan *os.ProcessState

	calls chan func()   // run on the forking thread; nil unless made by Start
	gone  chan struct{} // closed when the forking thread is released
}

// OnForkThread runs fn on the OS thread that forked the child, and returns
// once fn has returned. The child's parent-death signal is tied to that
// thread: an execve(2) of the supervisor from any other thread ends this
// one, which kills the child, while from this thread it does not (the
// thread becomes the new program's main thread, still the child's parent).
// It returns os.ErrProcessDone when the child has exited and the thread is
// released, and errors.ErrUnsupported for a Process not made by Start.
func (p *Process) OnForkThread(fn func()) error {
	if p.calls == nil {
		return errors.ErrUnsupported
	}
	ran := make(chan struct{})
	select {
	case p.calls <- func() { defer close(ran); fn() }:
		<-ran
		return nil
	case <-p.gone:
		return os.ErrProcessDone
	}
}

// Start starts the child through the exec helper (see Child.Helper). The
// fork runs on an OS thread locked for the child's whole life, because the
// parent-death signal (SIGKILL) fires when the thread that forked exits, not
// the process: this way the child dies with the supervisor and never before.
// Start marks every fd of the calling process from 3 on close-on-exec, so
// that the child gets the handed fds and no others; a caller that means to
// pass an fd through an exec of its own clears the flag just before it.
func Start(c Child) (*Process, error) {
	if len(c.Args) == 0 {
		return nil, errors.New("start child: no command")
	}
	helper, err := c.helper()
	if err != nil {
		return nil, fmt.Errorf("start child: %w", err)
	}
	// Only the handed fds reach the application. An fd the supervisor
	// inherited without close-on-exec (from a shell, a test harness, a
	// service manager that does not close them) would otherwise pass
	// through the fork into the application unannounced. Those handed are
	// dup'ed into place by the fork, which clears the flag on the copies.
	if err := exechelper.CloseOnExecFrom(3); err != nil {
		return nil, fmt.Errorf("start child: %w", err)
	}
	p, err := c.startThrough(helper)
	if err != nil && c.Helper == "" && helper == NativeHelper {
		// The kernel would not execute the native helper (no /proc, a
		// memfd_noexec policy, a security module): the next helper, and
		// that one from now on if it works. When the helper could not
		// be set up for want of fds or memory, only this time.
		if next, nerr := fallbackHelper(); nerr == nil {
			if p, nerr := c.startThrough(next); nerr == nil {
				if !nativeShort(err) {
					nativeRefused.Store(true)
				}
				p.Helper = helperName(next)
				return p, nil
			}
		}
	}
	if err != nil && helper == NativeHelper && !nativeShort(err) {
		err = fmt.Errorf("%w (the native exec helper, run from a memfd: does vm.memfd_noexec, a security module or a missing /proc refuse it? --exec-helper shell starts the child through /bin/sh)", err)
	}
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", c.Args[0], err)
	}
	p.Helper = helperName(helper)
	return p, nil
}

// startThrough starts the child through helper.
func (c Child) startThrough(helper string) (*Process, error) {
	cmd, closeHelper, err := c.command(helper)
	if err != nil {
		return nil, err
	}
	defer closeHelper()
	return startOnLockedThread(cmd)
}

// helper is the program the child is forked into: Helper, else the native
// helper where there is one, else the shell, else bpfsup's own executable.
func (c Child) helper() (string, error) {
	if c.Helper != "" {
		return c.Helper, nil
	}
	if nativeUsable() {
		return NativeHelper, nil
	}
	return fallbackHelper()
}

// fallbackHelper is the helper where the native one is not: the shell when
// there is one, else bpfsup's own executable.
func fallbackHelper() (string, error) {
	if shell, err := HelperNamed("shell"); err == nil {
		return shell, nil
	}
	exe, err := HelperNamed("bpfsup")
	if err != nil {
		return "", fmt.Errorf("no %s, and cannot find own executable: %w", ShellHelper, err)
	}
	return exe, nil
}

// command is the exec.Cmd that starts helper, which becomes the child: the
// handed fds and their names, the child's environment, and what the helper
// needs to change user and to check its parent. Once the child started,
// closeHelper closes what the command needed to run the helper.
func (c Child) command(helper string) (cmd *exec.Cmd, closeHelper func(), err error) {
	closeHelper = func() {}
	path := helper
	if helper == NativeHelper {
		// The fork moves the 3+len(Files) fds into place, and may dup
		// as many above them on the way (see syscall.forkAndExecInChild).
		f, fdPath, nerr := openNativeHelper(2*(3+len(c.Files)) + 2)
		if nerr != nil {
			return nil, nil, nerr
		}
		path, closeHelper = fdPath, func() { f.Close() }
	}
	defer func() {
		if err != nil {
			closeHelper()
		}
	}()
	names := make([]string, len(c.Files))
	extra := make([]*os.File, len(c.Files))
	for i, f := range c.Files {
		names[i], extra[i] = f.Name, f.File
	}
	encoded, err := handoff.EncodeNames(names)
	if err != nil {
		return nil, nil, err
	}

	env := c.Env
	if env == nil {
		env = os.Environ()
	}
	env = environ.Without(env, handoff.EnvListenFDs, handoff.EnvListenPID, handoff.EnvListenFDNames, handoff.EnvListenPIDFDID, handoff.EnvPinRoot,
		envExecUID, envExecGID, envExecGroups, envExecPPID)
	env = append(env,
		handoff.EnvListenFDs+"="+strconv.Itoa(len(c.Files)),
		handoff.EnvListenFDNames+"="+encoded,
	)
	if c.PinRoot != "" {
		env = append(env, handoff.EnvPinRoot+"="+c.PinRoot)
	}
	attr := &syscall.SysProcAttr{
		Pdeathsig: syscall.SIGKILL,
		// Its own process group: signals reach the child through
		// bpfsup only, never twice from a terminal.
		Setpgid: true,
	}
	var args []string
	switch helper {
	case NativeHelper, ShellHelper:
		args = append([]string{nativeName}, c.Args...)
		if helper == ShellHelper {
			args = append([]string{helper, "-c", ShellScript, shellName}, c.Args...)
		}
		// Go sets the parent-death signal after the change of user (which
		// clears it), and kills the child when the parent died meanwhile.
		if cr := c.Credential; cr != nil {
			attr.Credential = &syscall.Credential{Uid: cr.UID, Gid: cr.GID, Groups: cr.Groups}
		}
	default:
		args = append([]string{helper, ExecArg}, c.Args...)
		env = append(env, envExecPPID+"="+strconv.Itoa(os.Getpid()))
		env = append(env, c.credentialEnv()...)
	}
	return &exec.Cmd{
		Path:        path,
		Args:        args,
		Env:         env,
		ExtraFiles:  extra,
		Stdout:      orStd(c.Stdout, os.Stdout),
		Stderr:      orStd(c.Stderr, os.Stderr),
		SysProcAttr: attr,
	}, closeHelper, nil
}

// credentialEnv tells the exec helper which user to become, if any.
func (c Child) credentialEnv() []string {
	cr := c.Credential
	if cr == nil {
		return nil
	}
	groups := make([]string, len(cr.Groups))
	for i, g := range cr.Groups {
		groups[i] = strconv.FormatUint(uint64(g), 10)
	}
	return []string{
		envExecUID + "=" + strconv.FormatUint(uint64(cr.UID), 10),
		envExecGID + "=" + strconv.FormatUint(uint64(cr.GID), 10),
		envExecGroups + "=" + strings.Join(groups, ","),
	}
}

// startOnLockedThread starts cmd from an OS thread that stays locked, and
// serves OnForkThread, until the child has exited (see Start).
func startOnLockedThread(cmd *exec.Cmd) (*Process, error) {
	started := make(chan error, 1)
	done := make(chan *os.ProcessState, 1)
	calls, gone := make(chan func()), make(chan struct{})
	go func() {
		// Never unlocked while the child lives: see Start.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		// Waited for from another goroutine (any thread of the process may
		// wait for it), so that this one stays free for OnForkThread.
		waited := make(chan struct{})
		go func() {
			_ = cmd.Wait()
			done <- cmd.ProcessState
			close(waited)
		}()
		for {
			select {
			case fn := <-calls:
				fn()
			case <-waited:
				close(gone)
				return
			}
		}
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return &Process{Pid: cmd.Process.Pid, Done: done, calls: calls, gone: gone}, nil
}

func orStd(w io.Writer, def *os.File) io.Writer {
	if w == nil {
		return def
	}
	return w
}

// ExecHelper is the exec helper's whole life: it sets LISTEN_PID to its own
// pid (which the application keeps across exec), drops privileges when asked
// to, re-arms the parent-death signal that a change of user clears, marks
// every fd above the handed ones close-on-exec, and execs the application,
// args. It never returns; on error it exits with status 127 (126 when the
// command cannot be executed), as a shell does.
//
// A binary that links this package need not call it: the helper runs from
// the init function of package internal/exechelper when the first
// argument is ExecArg, before most of the binary is even initialised, which
// makes each start of the child cheaper (see that package).
func ExecHelper(args []string) {
	exechelper.Main(args)
}
