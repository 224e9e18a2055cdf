// Command benchchild is the application the benchmarks supervise. It does as
// little as a program can: as soon as main runs it checks the fds it was
// handed (LISTEN_FDS, LISTEN_PID, each fd open), reads CLOCK_MONOTONIC and
// reports "start PID NANOS NFDS" in one datagram to the unix socket named by
// BENCH_SOCK. The clock is system-wide, so the benchmark can subtract a time
// taken in another process. NFDS is -1 when the hand-off is broken.
//
// Its one argument says what it does next:
//
//	exit   exit 0 at once
//	crash  report "die PID NANOS", then exit 1 (a crash, for restart policies)
//	wait   wait for SIGTERM or SIGINT, then exit 0
package main

import (
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

func mono() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// handedFDs returns how many fds were handed over and are open, or -1 when
// the environment says fds are there but they are not ours or not open.
func handedFDs() int {
	s := os.Getenv("LISTEN_FDS")
	if s == "" {
		return 0
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return -1
	}
	if pid, err := strconv.Atoi(os.Getenv("LISTEN_PID")); err != nil || pid != os.Getpid() {
		return -1
	}
	var st unix.Stat_t
	for fd := 3; fd < 3+n; fd++ {
		if unix.Fstat(fd, &st) != nil {
			return -1
		}
	}
	return n
}

func send(fd int, addr *unix.SockaddrUnix, msg string) {
	if err := unix.Sendto(fd, []byte(msg), 0, addr); err != nil {
		fmt.Fprintf(os.Stderr, "benchchild: report to %s: %v\n", addr.Name, err)
		os.Exit(2)
	}
}

func main() {
	started := mono()
	nfds := handedFDs()
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: benchchild exit|crash|wait")
		os.Exit(2)
	}
	sock := os.Getenv("BENCH_SOCK")
	if sock == "" {
		fmt.Fprintln(os.Stderr, "benchchild: BENCH_SOCK not set")
		os.Exit(2)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchchild: socket: %v\n", err)
		os.Exit(2)
	}
	addr := &unix.SockaddrUnix{Name: sock}
	pid := os.Getpid()
	send(fd, addr, fmt.Sprintf("start %d %d %d", pid, started, nfds))

	switch os.Args[1] {
	case "exit":
		os.Exit(0)
	case "crash":
		send(fd, addr, fmt.Sprintf("die %d %d", pid, mono()))
		os.Exit(1)
	case "wait":
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
		<-c
		os.Exit(0)
	default:
		fmt.Fprintf(os.Stderr, "benchchild: unknown mode %q\n", os.Args[1])
		os.Exit(2)
	}
}
