package handoff

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

	"golang.org/x/sys/unix"
)

// ExecArg, as the first argument of bpfsup, makes it the exec helper: see
// ExecHelper.
const ExecArg = "__bpfsup_exec"

// Variables from the supervisor to the exec helper; the helper removes them.
const (
	envExecUID    = "BPFSUP_EXEC_UID"
	envExecGID    = "BPFSUP_EXEC_GID"
	envExecGroups = "BPFSUP_EXEC_GROUPS"
	envExecPPID   = "BPFSUP_EXEC_PPID"
)

// Credential is the user the child runs as.
type Credential struct {
	UID, GID uint32
	// Groups are the supplementary groups; empty clears root's.
	Groups []uint32
}

// Child describes an application to start with handed fds.
type Child struct {
	// Helper is the bpfsup binary re-executed as the exec helper; the running
	// executable when empty.
	Helper string
	// Args is the application's command line; Args[0] is looked up in PATH.
	Args []string
	// Env is the application's environment (the protocol's variables are
	// added); the supervisor's own when nil.
	Env []string
	// Files are handed in order: entry i becomes fd 3+i, named Files[i].Name.
	// The supervisor keeps ownership; Start does not close them.
	Files []NamedFile
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
	// Done receives the child's wait status once, when it has exited and been
	// reaped.
	Done <-chan *os.ProcessState
}

// Start starts the child through the exec helper. The fork runs on an OS
// thread locked for the child's whole life, because the parent-death signal
// (SIGKILL) fires when the thread that forked exits, not the process: this
// way the child dies with the supervisor and never before.
func Start(c Child) (*Process, error) {
	if len(c.Args) == 0 {
		return nil, errors.New("start child: no command")
	}
	helper := c.Helper
	if helper == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("start child: find own executable: %w", err)
		}
		helper = exe
	}
	names := make([]string, len(c.Files))
	extra := make([]*os.File, len(c.Files))
	for i, f := range c.Files {
		names[i], extra[i] = f.Name, f.File
	}
	encoded, err := EncodeNames(names)
	if err != nil {
		return nil, fmt.Errorf("start child: %w", err)
	}

	env := c.Env
	if env == nil {
		env = os.Environ()
	}
	env = withoutVars(env, EnvListenFDs, EnvListenPID, EnvListenFDNames, EnvPinRoot,
		envExecUID, envExecGID, envExecGroups, envExecPPID)
	env = append(env,
		EnvListenFDs+"="+strconv.Itoa(len(c.Files)),
		EnvListenFDNames+"="+encoded,
		envExecPPID+"="+strconv.Itoa(os.Getpid()),
	)
	if c.PinRoot != "" {
		env = append(env, EnvPinRoot+"="+c.PinRoot)
	}
	if cr := c.Credential; cr != nil {
		groups := make([]string, len(cr.Groups))
		for i, g := range cr.Groups {
			groups[i] = strconv.FormatUint(uint64(g), 10)
		}
		env = append(env,
			envExecUID+"="+strconv.FormatUint(uint64(cr.UID), 10),
			envExecGID+"="+strconv.FormatUint(uint64(cr.GID), 10),
			envExecGroups+"="+strings.Join(groups, ","),
		)
	}

	cmd := &exec.Cmd{
		Path:       helper,
		Args:       append([]string{helper, ExecArg}, c.Args...),
		Env:        env,
		ExtraFiles: extra,
		Stdout:     orStd(c.Stdout, os.Stdout),
		Stderr:     orStd(c.Stderr, os.Stderr),
		SysProcAttr: &syscall.SysProcAttr{
			Pdeathsig: syscall.SIGKILL,
			// Its own process group: signals reach the child through
			// bpfsup only, never twice from a terminal.
			Setpgid: true,
		},
	}

	started := make(chan error, 1)
	done := make(chan *os.ProcessState, 1)
	go func() {
		// Never unlocked while the child lives: see the doc comment.
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		done <- cmd.ProcessState
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", c.Args[0], err)
	}
	return &Process{Pid: cmd.Process.Pid, Done: done}, nil
}

func orStd(w io.Writer, def *os.File) io.Writer {
	if w == nil {
		return def
	}
	return w
}

func withoutVars(env []string, names ...string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		drop := false
		for _, n := range names {
			if k == n {
				drop = true
				break
			}
		}
		if !drop {
			out = append(out, kv)
		}
	}
	return out
}

// ExecHelper is the exec helper's whole life: called by bpfsup's main when
// its first argument is ExecArg, with the application's command line in args.
// It sets LISTEN_PID to its own pid (which the application keeps across exec),
// drops privileges when asked to, re-arms the parent-death signal that a
// change of user clears, and execs the application. It never returns; on
// error it exits with status 127 (126 when the command cannot be executed),
// as a shell does.
func ExecHelper(args []string) {
	fail := func(code int, format string, a ...any) {
		fmt.Fprintf(os.Stderr, "bpfsup: exec: "+format+"\n", a...)
		os.Exit(code)
	}
	if len(args) == 0 {
		fail(127, "no command")
	}
	ppid, _ := strconv.Atoi(os.Getenv(envExecPPID))

	if uidStr := os.Getenv(envExecUID); uidStr != "" {
		uid, err1 := strconv.Atoi(uidStr)
		gid, err2 := strconv.Atoi(os.Getenv(envExecGID))
		if err1 != nil || err2 != nil {
			fail(127, "bad credentials %q/%q", uidStr, os.Getenv(envExecGID))
		}
		groups := []int{}
		for _, g := range strings.Split(os.Getenv(envExecGroups), ",") {
			if g == "" {
				continue
			}
			n, err := strconv.Atoi(g)
			if err != nil {
				fail(127, "bad group %q", g)
			}
			groups = append(groups, n)
		}
		// Go applies these to every thread of the process.
		if err := syscall.Setgroups(groups); err != nil {
			fail(127, "setgroups: %v", err)
		}
		if err := syscall.Setgid(gid); err != nil {
			fail(127, "setgid %d: %v", gid, err)
		}
		if err := syscall.Setuid(uid); err != nil {
			fail(127, "setuid %d: %v", uid, err)
		}
	}
	// A change of credentials clears the parent-death signal: set it again,
	// then make sure the parent did not die in between.
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0); err != nil {
		fail(127, "set parent-death signal: %v", err)
	}
	if ppid != 0 && os.Getppid() != ppid {
		os.Exit(127)
	}

	env := withoutVars(os.Environ(), envExecUID, envExecGID, envExecGroups, envExecPPID, EnvListenPID)
	env = append(env, EnvListenPID+"="+strconv.Itoa(os.Getpid()))
	path, err := exec.LookPath(args[0])
	if err != nil && !errors.Is(err, exec.ErrDot) {
		fail(127, "%v", err)
	}
	if err := syscall.Exec(path, args, env); err != nil {
		fail(126, "%s: %v", args[0], err)
	}
}
