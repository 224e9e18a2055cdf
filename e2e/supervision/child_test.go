package supervision

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/handoff"
)

// The test binary is its own child application: bpfsup starts it with
// envChild set to a behaviour, and TestMain runs that behaviour instead of
// the tests. Behaviours report on stdout (which bpfsup shares with its
// child, so the test reads both in one stream) or in files the test names.
const (
	envChild = "BPFSUP_TEST_CHILD"
	// envFile is a file the behaviour writes to (marker, start log).
	envFile = "BPFSUP_TEST_FILE"
	// envBenchSock is the unixgram socket the bench behaviour reports to.
	envBenchSock = "BPFSUP_TEST_BENCH_SOCK"
	// envStableRun is the index of the run of the backoff behaviour that
	// lasts envStableFor.
	envStableRun = "BPFSUP_TEST_STABLE_RUN"
	envStableFor = "BPFSUP_TEST_STABLE_FOR"
)

// childEnv is the environment for a bpfsup whose child is this binary
// running behaviour.
func childEnv(behaviour string, extra ...string) []string {
	return append(append(os.Environ(), envChild+"="+behaviour), extra...)
}

// runChild runs behaviour and returns the exit status.
func runChild(behaviour string) int {
	switch behaviour {
	case "signals":
		return childSignals()
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		fmt.Printf("child pid=%d ready\n", os.Getpid())
		blockForever()
	case "backoff":
		return childBackoff()
	case "crash-twice":
		return childCrashTwice()
	case "nobody":
		return childNobody()
	case "serve":
		return childServe()
	case "bench":
		return childBench()
	}
	fmt.Fprintf(os.Stderr, "unknown child behaviour %q\n", behaviour)
	return 2
}

// childSignals reports every forwarded signal; SIGTERM and SIGINT write
// the marker file and end it with status 42 and 43.
func childSignals() int {
	sigc := make(chan os.Signal, 8)
	signal.Notify(sigc, syscall.SIGTERM, syscall.SIGINT, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGWINCH)
	fmt.Printf("child pid=%d ready\n", os.Getpid())
	for sig := range sigc {
		name := unix.SignalName(sig.(syscall.Signal))
		fmt.Printf("child got %s\n", name)
		switch sig {
		case syscall.SIGTERM, syscall.SIGINT:
			if err := os.WriteFile(os.Getenv(envFile), []byte(name), 0o644); err != nil {
				fmt.Printf("child: write marker: %v\n", err)
				return 1
			}
			if sig == syscall.SIGTERM {
				return 42
			}
			return 43
		}
	}
	return 0
}

// monotonic is CLOCK_MONOTONIC in nanoseconds: comparable between
// processes, unlike Go's own monotonic readings.
func monotonic() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// appendLine appends a line to the file named by envFile.
func appendLine(line string) error {
	f, err := os.OpenFile(os.Getenv(envFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(f, line)
	return errors.Join(err, f.Close())
}

// runIndex is how many runs came before this one, from the start lines in
// the file.
func runIndex() int {
	data, _ := os.ReadFile(os.Getenv(envFile))
	return strings.Count(string(data), "start ")
}

// childBackoff logs "start T" and "end T" (monotonic ns) and exits 3 at
// once, except run envStableRun, which lasts envStableFor first.
func childBackoff() int {
	n := runIndex()
	if err := appendLine(fmt.Sprintf("start %d", monotonic())); err != nil {
		fmt.Println("child:", err)
		return 1
	}
	if strconv.Itoa(n) == os.Getenv(envStableRun) {
		d, _ := time.ParseDuration(os.Getenv(envStableFor))
		time.Sleep(d) // the behaviour under test: a run this long
	}
	if err := appendLine(fmt.Sprintf("end %d", monotonic())); err != nil {
		fmt.Println("child:", err)
		return 1
	}
	return 3
}

// childCrashTwice exits 3 on its first two runs and then stays up.
func childCrashTwice() int {
	n := runIndex()
	if err := appendLine(fmt.Sprintf("start %d", monotonic())); err != nil {
		fmt.Println("child:", err)
		return 1
	}
	if n < 2 {
		return 3
	}
	fmt.Printf("child pid=%d up after %d crashes\n", os.Getpid(), n)
	blockForever()
	return 0
}

// blockForever blocks until the process is killed. Not select{}: in a
// binary without cgo (the static test binaries of `make kernels`) the
// runtime takes that for a deadlock and exits 2.
func blockForever() {
	for {
		time.Sleep(time.Hour)
	}
}

// childNobody reports who it runs as and what it may do with its maps and
// the pins: "report KEY=VALUE" lines.
func childNobody() int {
	report := func(k string, v any) { fmt.Printf("report %s=%v\n", k, v) }
	status, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(status), "\n") {
		for _, field := range []string{"Uid", "Gid", "Groups"} {
			if v, ok := strings.CutPrefix(line, field+":"); ok {
				report(strings.ToLower(field), strings.Join(strings.Fields(v), ","))
			}
		}
	}

	counters, err := handoff.Map("counters")
	if err != nil {
		report("counters", err)
		return 1
	}
	defer counters.Close()
	var old uint64
	report("counters_lookup", errString(counters.Lookup(uint32(0), &old)))
	report("counters_update", errString(counters.Update(uint32(0), uint64(77), ebpf.UpdateAny)))

	ports, err := handoff.Map("drop_ports")
	if err != nil {
		report("drop_ports", err)
		return 1
	}
	defer ports.Close()
	var v uint8
	err = ports.Lookup(uint16(9), &v)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		err = nil // read access is what counts
	}
	report("drop_ports_lookup", errString(err))
	report("drop_ports_update", errString(ports.Update(uint16(9), uint8(1), ebpf.UpdateAny)))

	pin := handoff.PinRoot() + "/counter/maps/counters"
	m, err := ebpf.LoadPinnedMap(pin, nil)
	if err == nil {
		m.Close()
	}
	report("open_pin", errString(err))

	sent, err := daemon.SdNotify(false, "READY=1")
	report("notify", fmt.Sprintf("%v/%s", sent, errString(err)))

	// Until the test has seen READY=1 go through: exiting now could end
	// bpfsup (--restart never) before it forwards it.
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGTERM)
	report("done", 1)
	<-sigc
	return 0
}

// errString is "ok", or the errno's name (EPERM) when err wraps one.
func errString(err error) string {
	if err == nil {
		return "ok"
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	return strings.ReplaceAll(err.Error(), " ", "_")
}

// childServe is a socket-activated server: it answers every connection on
// its first fd with what it was handed, after writing 1234 into counters[1]
// through the handed map.
func childServe() int {
	files, err := handoff.Files()
	if err != nil || len(files) == 0 {
		fmt.Printf("child: no fds: %v\n", err)
		return 1
	}
	var names []string
	for _, f := range files {
		names = append(names, f.Name)
	}
	counters, err := handoff.Map("counters")
	if err != nil {
		fmt.Printf("child: %v\n", err)
		return 1
	}
	defer counters.Close()
	mapResult := errString(counters.Update(uint32(1), uint64(1234), ebpf.UpdateAny))

	l, err := net.FileListener(files[0].File)
	if err != nil {
		fmt.Printf("child: fd 3 is no listener: %v\n", err)
		return 1
	}
	for {
		c, err := l.Accept()
		if err != nil {
			fmt.Printf("child: accept: %v\n", err)
			return 1
		}
		fmt.Fprintf(c, "names=%s map=%s pid=%d\n", strings.Join(names, ","), mapResult, os.Getpid())
		c.Close()
	}
}

// childBench reports "ready T" once it holds its map, then "exit T" and
// exits 1 at once: a crash loop whose every step the benchmark can time.
func childBench() int {
	conn, err := net.Dial("unixgram", os.Getenv(envBenchSock))
	if err != nil {
		return 1
	}
	if _, err := handoff.Map("counters"); err != nil {
		fmt.Fprintln(conn, "error", err)
		return 1
	}
	fmt.Fprintf(conn, "ready %d", monotonic())
	fmt.Fprintf(conn, "exit %d", monotonic())
	return 1
}
