package spawn

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// NativeHelper is the native exec helper, as Child.Helper: a static
// program of a few kilobytes, without libc, that bpfsup carries in its
// binary (nativehelper/helper.c, built into nativehelper/helper_amd64.bin).
// It does what ShellScript does, LISTEN_PID and the exec of the application
// looked up in PATH, at about a fifth of a shell's cost on every start of
// the child (0.5 ms above a bare fork+exec on the bench's VM, the shell
// 2.2-2.7). It is the default on x86-64; elsewhere, and where the kernel
// will not execute it, the shell is.
const NativeHelper = "<native>"

// nativeName is the helper's argv[0], which it puts before its errors
// ("bpfsup exec: foo: not found"), as the shell's $0.
const nativeName = shellName

// NativeHelperImage is the native exec helper's executable for this
// architecture, nil where there is none.
func NativeHelperImage() []byte { return nativeImage }

// nativeRefused is set once the kernel refused to execute the native helper
// (no /proc, vm.memfd_noexec, a security module) and the shell worked
// instead: later starts go straight to the shell.
var nativeRefused atomic.Bool

// errNativeSetup is the error of a native helper that could not be set up
// for a start, as opposed to one the kernel refused to execute.
var errNativeSetup = errors.New("native exec helper")

// nativeShort says that err is a native helper's that could not be set up
// for want of fds or memory (the fd above the handed ones is over
// RLIMIT_NOFILE: EINVAL), which the next start may have; any other
// failure, memfd_noexec's EACCES among them, is the kernel's refusal.
func nativeShort(err error) bool {
	return errors.Is(err, errNativeSetup) &&
		(errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) || errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.EINVAL))
}

// nativeUsable says whether the default helper is the native one.
func nativeUsable() bool { return len(nativeImage) > 0 && !nativeRefused.Load() }

// openNativeHelper puts the native helper in a sealed memfd and returns it
// with the path the forked child executes it by, /proc/self/fd/N. N is at
// least minFD: the fork moves the handed fds into place from 3 on, and may
// use as many fds above them on the way, none of which must be N.
func openNativeHelper(minFD int) (*os.File, string, error) {
	if len(nativeImage) == 0 {
		return nil, "", fmt.Errorf("%w: none for this architecture", errNativeSetup)
	}
	const flags = unix.MFD_CLOEXEC | unix.MFD_ALLOW_SEALING
	// MFD_EXEC (Linux 6.3) asks for an executable memfd where
	// vm.memfd_noexec makes them non-executable by default; older kernels
	// refuse the flag, and their memfds are executable.
	fd, err := unix.MemfdCreate("bpfsup-exec", flags|unix.MFD_EXEC)
	if errors.Is(err, unix.EINVAL) {
		fd, err = unix.MemfdCreate("bpfsup-exec", flags)
	}
	if err != nil {
		return nil, "", fmt.Errorf("%w: memfd_create: %w", errNativeSetup, err)
	}
	f := os.NewFile(uintptr(fd), "bpfsup-exec")
	defer f.Close()
	if _, err := f.Write(nativeImage); err != nil {
		return nil, "", fmt.Errorf("%w: %w", errNativeSetup, err)
	}
	// Sealed, so that nothing can change the program between here and the
	// child's exec of it.
	const seals = unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		return nil, "", fmt.Errorf("%w: seal: %w", errNativeSetup, err)
	}
	high, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, minFD)
	if err != nil {
		return nil, "", fmt.Errorf("%w: fd above %d: %w", errNativeSetup, minFD, err)
	}
	return os.NewFile(uintptr(high), "bpfsup-exec"), "/proc/self/fd/" + strconv.Itoa(high), nil
}

// HelperNames are the exec helpers `bpfsup run --exec-helper` names.
var HelperNames = []string{"native", "shell", "bpfsup"}

// HelperNamed is the Child.Helper that name stands for: "" (Start's
// choice) for "", NativeHelper for "native", ShellHelper for "shell", the
// running executable for "bpfsup". A helper this machine does not have is
// an error that says so.
func HelperNamed(name string) (string, error) {
	switch name {
	case "":
		return "", nil
	case "native":
		if len(nativeImage) == 0 {
			return "", fmt.Errorf("no native exec helper for %s: use shell or bpfsup", runtime.GOARCH)
		}
		return NativeHelper, nil
	case "shell":
		if err := unix.Access(ShellHelper, unix.X_OK); err != nil {
			return "", fmt.Errorf("%s: %w", ShellHelper, err)
		}
		return ShellHelper, nil
	case "bpfsup":
		return os.Executable()
	}
	return "", fmt.Errorf("%q: must be native, shell or bpfsup", name)
}

// helperName is the name HelperNamed takes for helper.
func helperName(helper string) string {
	switch helper {
	case NativeHelper:
		return "native"
	case ShellHelper:
		return "shell"
	}
	return "bpfsup"
}
