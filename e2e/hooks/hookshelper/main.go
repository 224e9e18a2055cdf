// Command hookshelper causes the events that the hook conformance test
// (package hookstest) counts, one after another, in a process of its own
// that the test can place in a cgroup and whose pid it can give a probe.
//
//	hookshelper MODE [NETNS]
//
// It prints "ready", waits for a line "go" on its stdin, then causes one
// event of MODE after another until its stdin has another line or ends, and
// prints "events N", N being the number of events it caused. Given NETNS, a
// network namespace's path, it causes them from inside that namespace.
//
// It needs Linux and the privileges of the events it causes (none beyond
// entering NETNS).
package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// modes are the events the helper can cause.
var modes = map[string]func() error{
	// getppid: one getppid(2): the syscalls/sys_enter_getppid tracepoint, a
	// sys_enter raw tracepoint, __task_pid_nr_ns in the kernel.
	"getppid": func() error { unix.Getppid(); return nil },
	// call: one call of main.uprobeTarget, for uprobes.
	"call": func() error {
		if uprobeTarget() == 0 {
			return errors.New("uprobeTarget did not run")
		}
		return nil
	},
	// open: one open(2) of /dev/null: the file_open LSM hook,
	// security_file_open.
	"open": func() error {
		fd, err := unix.Open("/dev/null", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		return unix.Close(fd)
	},
	// socket: a UDP socket (cgroup sock_create) connected to 127.0.0.1:9
	// (cgroup connect4) sending one datagram (cgroup skb egress).
	"socket": func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Connect(fd, &unix.SockaddrInet4{Port: 9, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			return err
		}
		_, err = unix.Write(fd, []byte("x"))
		return err
	},
}

// uprobeCalls gives uprobeTarget something to do.
var uprobeCalls uint64

// uprobeTarget is what the uprobe and uretprobe cases probe. It is a leaf
// that never grows its stack (nosplit) and so is never preempted inside: a
// uretprobe replaces the return address on the stack while the function
// runs, which the Go runtime must not meet in a traceback.
//
//go:noinline
//go:nosplit
func uprobeTarget() uint64 { uprobeCalls++; return uprobeCalls }

func main() {
	if len(os.Args) < 2 || len(os.Args) > 3 {
		fmt.Fprintln(os.Stderr, "usage: hookshelper MODE [NETNS]")
		os.Exit(2)
	}
	os.Exit(run(os.Args[1], os.Args[2:]))
}

func run(mode string, netns []string) int {
	event, ok := modes[mode]
	if !ok {
		fmt.Fprintf(os.Stderr, "hookshelper: unknown mode %q\n", mode)
		return 2
	}
	// Every event comes from this thread, which is the one in the namespace.
	runtime.LockOSThread()
	if len(netns) == 1 {
		f, err := os.Open(netns[0])
		if err != nil {
			fmt.Fprintf(os.Stderr, "hookshelper: %v\n", err)
			return 1
		}
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			fmt.Fprintf(os.Stderr, "hookshelper: enter %s: %v\n", netns[0], err)
			return 1
		}
		f.Close()
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() || in.Text() != "go" {
		fmt.Fprintln(os.Stderr, "hookshelper: no go")
		return 2
	}
	stop := make(chan struct{})
	go func() {
		in.Scan()
		close(stop)
	}()
	var n uint64
	for {
		select {
		case <-stop:
			fmt.Printf("events %d\n", n)
			return 0
		default:
		}
		if err := event(); err != nil {
			fmt.Fprintf(os.Stderr, "hookshelper: %s: %v\n", mode, err)
			return 1
		}
		n++
		// Paced, to leave the CPU to bpfsup.
		time.Sleep(200 * time.Microsecond)
	}
}
