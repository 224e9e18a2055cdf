// Package exechelper is the exec helper of package spawn: the short life
// of a re-executed bpfsup between its fork by the supervisor and its exec of
// the application (see spawn.Start).
//
// It runs from this package's init function, as soon as the process starts,
// when the first argument is Arg. It imports nothing but a few light packages
// of the standard library, so that Go initialises it after them and before
// everything else in the binary: the helper then skips the initialisation of
// the rest of bpfsup (the Prometheus client, cilium/ebpf, the CLI ...), which
// costs more than the helper's own work and runs on every start of the child.
// It also opens no fd before the application inherits fds 3 and up.
// TestExecHelperRunsFirst (e2e/supervision) keeps the import list honest.
package exechelper

import (
	"os"
	"runtime"
	"strconv"
	"syscall"
)

// Arg is the first argument that makes a binary linking this package the
// exec helper.
const Arg = "__bpfsup_exec"

// Variables from the supervisor to the helper; the helper removes them.
const (
	EnvUID    = "BPFSUP_EXEC_UID"
	EnvGID    = "BPFSUP_EXEC_GID"
	EnvGroups = "BPFSUP_EXEC_GROUPS"
	EnvPPID   = "BPFSUP_EXEC_PPID"
)

// The socket-activation variables the helper reads and writes.
const (
	envListenFDs = "LISTEN_FDS"
	envListenPID = "LISTEN_PID"
	firstFD      = 3
)

func init() {
	if len(os.Args) > 1 && os.Args[1] == Arg {
		Main(os.Args[2:])
	}
}

// Main is the exec helper's whole life, with the application's command line
// in args. It sets LISTEN_PID to its own pid (which the application keeps
// across exec), drops privileges when asked to, re-arms the parent-death
// signal that a change of user clears, and execs the application. It never
// returns; on error it exits with status 127 (126 when the command cannot be
// executed), as a shell does.
func Main(args []string) {
	// The parent-death signal belongs to a thread, and the thread that
	// calls execve is the one that becomes the application: set it and exec
	// on the same thread, or the application runs without it.
	runtime.LockOSThread()
	fail := func(code int, msg ...string) {
		line := "bpfsup: exec: "
		for _, m := range msg {
			line += m
		}
		os.Stderr.WriteString(line + "\n")
		os.Exit(code)
	}
	if len(args) == 0 {
		fail(127, "no command")
	}
	ppid, _ := strconv.Atoi(os.Getenv(EnvPPID))

	if uidStr := os.Getenv(EnvUID); uidStr != "" {
		uid, err1 := strconv.Atoi(uidStr)
		gid, err2 := strconv.Atoi(os.Getenv(EnvGID))
		if err1 != nil || err2 != nil {
			fail(127, "bad credentials ", strconv.Quote(uidStr), "/", strconv.Quote(os.Getenv(EnvGID)))
		}
		groups := []int{}
		for _, g := range split(os.Getenv(EnvGroups), ',') {
			if g == "" {
				continue
			}
			n, err := strconv.Atoi(g)
			if err != nil {
				fail(127, "bad group ", strconv.Quote(g))
			}
			groups = append(groups, n)
		}
		// Go applies these to every thread of the process.
		if err := syscall.Setgroups(groups); err != nil {
			fail(127, "setgroups: ", err.Error())
		}
		if err := syscall.Setgid(gid); err != nil {
			fail(127, "setgid ", strconv.Itoa(gid), ": ", err.Error())
		}
		if err := syscall.Setuid(uid); err != nil {
			fail(127, "setuid ", strconv.Itoa(uid), ": ", err.Error())
		}
	}
	// A change of credentials clears the parent-death signal: set it again,
	// then make sure the parent did not die in between.
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0); errno != 0 {
		fail(127, "set parent-death signal: ", errno.Error())
	}
	if ppid != 0 && os.Getppid() != ppid {
		fail(127, "the supervisor (pid ", strconv.Itoa(ppid), ") died before ", args[0], " started; not starting it")
	}

	// Only the handed fds reach the application. An fd that bpfsup itself
	// inherited without close-on-exec (from a shell, a test harness, a
	// service manager that does not close them) would otherwise pass
	// through os/exec into the application unannounced.
	n, err := strconv.Atoi(os.Getenv(envListenFDs))
	if err != nil || n < 0 {
		n = 0
	}
	if err := CloseOnExecFrom(firstFD + n); err != nil {
		fail(127, err.Error())
	}

	env := withoutVars(os.Environ(), EnvUID, EnvGID, EnvGroups, EnvPPID, envListenPID)
	env = append(env, envListenPID+"="+strconv.Itoa(os.Getpid()))
	path, err := lookPath(args[0])
	if err != nil {
		fail(127, err.Error())
	}
	if err := syscall.Exec(path, args, env); err != nil {
		fail(126, args[0], ": ", err.Error())
	}
}

// sysCloseRange is close_range(2)'s number, the same on every architecture
// (system calls from 424 on share their numbers).
const (
	sysCloseRange     = 436
	closeRangeCloexec = 1 << 2
)

// CloseOnExecFrom marks every fd from first on close-on-exec: close_range(2)
// since Linux 5.11, one by one before.
func CloseOnExecFrom(first int) error {
	_, _, errno := syscall.Syscall(sysCloseRange, uintptr(first), ^uintptr(0), closeRangeCloexec)
	if errno == 0 {
		return nil
	}
	if errno != syscall.ENOSYS && errno != syscall.EINVAL {
		return &os.SyscallError{Syscall: "mark fds from " + strconv.Itoa(first) + " close-on-exec: close_range", Err: errno}
	}
	// Before Linux 5.11: one by one.
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range entries {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd >= first {
			syscall.CloseOnExec(fd)
		}
	}
	return nil
}

// split splits s around every sep; strings.Split, which this package does
// not import (see the package comment).
func split(s string, sep byte) []string {
	var parts []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == sep {
			parts = append(parts, s[start:i])
			start = i + 1
		}
	}
	return append(parts, s[start:])
}

// lookPath finds file as a shell would: as it is when it has a slash, else
// in the directories of PATH (an empty entry being the working directory).
// os/exec.LookPath does the same, but importing os/exec (or strings, or
// fmt) would make Go initialise much of bpfsup before this package (see the
// package comment).
func lookPath(file string) (string, error) {
	if len(split(file, '/')) > 1 {
		if err := executable(file); err != nil {
			return "", err
		}
		return file, nil
	}
	for _, dir := range split(os.Getenv("PATH"), ':') {
		if dir == "" {
			dir = "."
		}
		path := dir + "/" + file
		if executable(path) == nil {
			return path, nil
		}
	}
	return "", &os.PathError{Op: "exec", Path: file, Err: errNotFound}
}

var errNotFound = errorString("executable file not found in $PATH")

type errorString string

func (e errorString) Error() string { return string(e) }

// executable reports why path cannot be executed: missing, a directory, or
// without any execute bit.
func executable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if m := fi.Mode(); m.IsDir() || m&0o111 == 0 {
		return &os.PathError{Op: "exec", Path: path, Err: os.ErrPermission}
	}
	return nil
}

func withoutVars(env []string, names ...string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		k := split(kv, '=')[0]
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
