// Command init is PID 1 of the test VMs that `make kernels` boots: it
// prepares the machine as the tests expect it (proc, sysfs, devtmpfs, tmpfs,
// bpffs, tracefs, cgroup2, loopback up, the kernel modules the tests need),
// runs each test binary of the plan (/vmtest/plan.json) with its output on
// the console between markers, checks that nothing was left behind, and
// powers the VM off through qemu's isa-debug-exit port with the number of
// packages that failed.
//
// It must be linked statically (CGO_ENABLED=0): the initramfs has no C
// library for it.
package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/kernels/vmplan"
)

func main() {
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "vminit: not PID 1; this program is the /init of the test VMs")
		os.Exit(2)
	}
	failed, err := run()
	if err != nil {
		fmt.Printf("\n%s %v\n", vmplan.MarkError, err)
		failed = 100
	}
	fmt.Printf("\n%s\n", vmplan.MarkDone)
	powerOff(min(failed, 100))
}

func run() (int, error) {
	// No rlimit probe has run in this process (it imports no BPF library),
	// and the test binaries inherit the limit: lift it once, here.
	inf := &unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}
	if err := unix.Setrlimit(unix.RLIMIT_MEMLOCK, inf); err != nil {
		return 0, fmt.Errorf("set RLIMIT_MEMLOCK: %w", err)
	}
	if err := mountAll(); err != nil {
		return 0, err
	}
	go reap()
	_ = unix.Sethostname([]byte("vmtest"))
	if err := loopbackUp(); err != nil {
		return 0, err
	}
	plan, err := vmplan.Read(vmplan.Path)
	if err != nil {
		return 0, err
	}
	for _, m := range plan.Modules {
		if err := loadModule(m); err != nil {
			return 0, err
		}
	}
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	fmt.Printf("vminit: kernel %s (%s), %d packages\n", unix.ByteSliceToString(uts.Release[:]), plan.Kernel, len(plan.Packages))

	env := append([]string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root",
		"TMPDIR=/tmp",
		"TERM=dumb",
	}, plan.Env...)
	failed := 0
	for _, pkg := range plan.Packages {
		code, leaks := runPackage(pkg, env)
		if code != 0 || leaks > 0 {
			failed++
		}
	}
	return failed, nil
}

type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
	optional               bool
}

var mounts = []mount{
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", false},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", false},
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", false},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "ptmxmode=0666", true},
	{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "", false},
	{"bpf", "/sys/fs/bpf", "bpf", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "mode=0700", false},
	{"tracefs", "/sys/kernel/tracing", "tracefs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", false},
	{"debugfs", "/sys/kernel/debug", "debugfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", true},
	{"securityfs", "/sys/kernel/security", "securityfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", true},
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, "", false},
}

func mountAll() error {
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil && !m.optional {
			return fmt.Errorf("create %s: %w", m.target, err)
		}
		if err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data); err != nil {
			if m.optional {
				fmt.Printf("vminit: mount %s on %s: %v (optional)\n", m.fstype, m.target, err)
				continue
			}
			return fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err)
		}
	}
	// /tmp and /run stay on the initramfs's own rootfs, writable as it is: a
	// tmpfs mounted there would hide the repository when it lives below
	// (a clone in /tmp). /run/netns is where `ip netns add` binds namespaces.
	if err := os.Chmod("/tmp", os.ModeSticky|0o777); err != nil {
		return err
	}
	return os.MkdirAll("/run/netns", 0o755)
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("bring up lo: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring up lo: get flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring up lo: set flags: %w", err)
	}
	return nil
}

func loadModule(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("load module: %w", err)
	}
	defer f.Close()
	if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load module %s: %w", filepath.Base(path), err)
	}
	return nil
}

// The reaper: as PID 1, /init inherits every orphan (a supervisor's
// children when a test kills the supervisor), and must reap them all. The
// statuses of the processes it started itself go to their waiters.
var (
	reapMu  sync.Mutex
	waiters = map[int]chan unix.WaitStatus{}
)

func reap() {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			// ECHILD: nothing to reap until the next start.
			time.Sleep(50 * time.Millisecond)
			continue
		}
		reapMu.Lock()
		if c, ok := waiters[pid]; ok {
			c <- ws
			delete(waiters, pid)
		}
		reapMu.Unlock()
	}
}

// start starts a process whose status start's channel delivers.
func start(bin string, args, env []string, dir string) (int, <-chan unix.WaitStatus, error) {
	reapMu.Lock()
	defer reapMu.Unlock()
	pid, err := syscall.ForkExec(bin, append([]string{bin}, args...), &syscall.ProcAttr{
		Dir:   dir,
		Env:   env,
		Files: []uintptr{devNull(), 1, 2},
		Sys:   &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		return 0, nil, err
	}
	c := make(chan unix.WaitStatus, 1)
	waiters[pid] = c
	return pid, c, nil
}

var nullFD uintptr

func devNull() uintptr {
	if nullFD == 0 {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY, 0)
		if err != nil {
			return 0
		}
		nullFD = uintptr(fd)
	}
	return nullFD
}

// runPackage runs one test binary and returns its exit status (-1 when it
// had to be killed) and how many things it left behind.
func runPackage(pkg vmplan.Package, env []string) (int, int) {
	fmt.Printf("\n%s %s\n", vmplan.MarkStart, pkg.Name)
	began := time.Now()
	code := -1
	pid, done, err := start(pkg.Bin, pkg.Args, env, pkg.Dir)
	if err != nil {
		fmt.Printf("vminit: start %s: %v\n", pkg.Bin, err)
	} else {
		timeout := time.Duration(pkg.TimeoutSeconds) * time.Second
		if timeout <= 0 {
			timeout = 30 * time.Minute
		}
		select {
		case ws := <-done:
			code = ws.ExitStatus()
			if ws.Signaled() {
				code = 128 + int(ws.Signal())
			}
		case <-time.After(timeout):
			fmt.Printf("\nvminit: %s still running after %s; killing it\n", pkg.Name, timeout)
			_ = unix.Kill(pid, unix.SIGKILL)
			<-done
		}
	}
	leaks := cleanUp(pkg.Name)
	fmt.Printf("\n%s %s exit=%d seconds=%.1f leaks=%d\n", vmplan.MarkEnd, pkg.Name, code, time.Since(began).Seconds(), leaks)
	return code, leaks
}

// cleanUp reports and removes what a package left behind, so that the next
// package starts on a clean machine: processes, named network namespaces,
// pins.
func cleanUp(pkg string) int {
	leaks := 0
	if procs := otherProcesses(); len(procs) > 0 {
		leaks += len(procs)
		fmt.Printf("%s %s processes: %s\n", vmplan.MarkLeak, pkg, strings.Join(procs, ", "))
		_ = unix.Kill(-1, unix.SIGKILL)
		deadline := time.Now().Add(5 * time.Second)
		for len(otherProcesses()) > 0 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
	}
	if names, _ := dirNames("/run/netns"); len(names) > 0 {
		leaks += len(names)
		fmt.Printf("%s %s network namespaces: %s\n", vmplan.MarkLeak, pkg, strings.Join(names, ", "))
		for _, n := range names {
			p := filepath.Join("/run/netns", n)
			_ = unix.Unmount(p, unix.MNT_DETACH)
			_ = os.Remove(p)
		}
	}
	if names, _ := dirNames("/sys/fs/bpf"); len(names) > 0 {
		leaks += len(names)
		fmt.Printf("%s %s pins under /sys/fs/bpf: %s\n", vmplan.MarkLeak, pkg, strings.Join(names, ", "))
		for _, n := range names {
			_ = os.RemoveAll(filepath.Join("/sys/fs/bpf", n))
		}
	}
	return leaks
}

// otherProcesses lists the user processes other than /init, as "pid comm".
func otherProcesses() []string {
	names, _ := dirNames("/proc")
	var out []string
	for _, n := range names {
		if n == "1" || strings.Trim(n, "0123456789") != "" {
			continue
		}
		// Kernel threads have no command line.
		if cmdline, err := os.ReadFile("/proc/" + n + "/cmdline"); err != nil || len(cmdline) == 0 {
			continue
		}
		comm, _ := os.ReadFile("/proc/" + n + "/comm")
		out = append(out, n+" "+strings.TrimSpace(string(comm)))
	}
	return out
}

func dirNames(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names, nil
}
