package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// mono is CLOCK_MONOTONIC in nanoseconds, the clock benchchild reports in:
// system-wide, so times taken in different processes subtract.
func mono() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ts.Nano()
}

// cleanupStack runs registered cleanups in reverse order, once, whether the
// run ends normally or by a signal. A cleanup registered after Run has
// started runs at once, so nothing made during an interrupt is left behind.
type cleanupStack struct {
	mu   sync.Mutex
	fns  []func()
	done bool
}

var cleanups cleanupStack

func (c *cleanupStack) add(fn func()) {
	c.mu.Lock()
	if c.done {
		c.mu.Unlock()
		fn()
		return
	}
	c.fns = append(c.fns, fn)
	c.mu.Unlock()
}

// mark returns the current depth of the stack, for runTo.
func (c *cleanupStack) mark() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.fns)
}

// runTo runs the cleanups registered since mark, newest first: a section
// frees what it made when it ends, whether it succeeded or not.
func (c *cleanupStack) runTo(mark int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.done {
		return
	}
	for len(c.fns) > mark {
		fn := c.fns[len(c.fns)-1]
		c.fns = c.fns[:len(c.fns)-1]
		fn()
	}
}

func (c *cleanupStack) run() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.done = true
	for i := len(c.fns) - 1; i >= 0; i-- {
		c.fns[i]()
	}
	c.fns = nil
}

// proc is a process the benchmark started. It dies with the benchmark
// (parent-death signal) and is stopped by the cleanups if still running.
type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // Wait's result, once done is closed
	log  string
}

// startProc starts cmd with its output in logPath (discarded when empty).
func startProc(name string, cmd *exec.Cmd, logPath string) (*proc, error) {
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), log: logPath}
	if logPath != "" {
		f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			return nil, fmt.Errorf("%s: log: %w", name, err)
		}
		defer f.Close()
		cmd.Stdout, cmd.Stderr = f, f
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// Its own process group, so that a ^C reaches the benchmark only and
	// the benchmark stops its processes in order.
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	cleanups.add(func() { p.stop(5 * time.Second) })
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// wait waits for the process to exit and returns its error (nil on exit 0).
func (p *proc) wait(timeout time.Duration) error {
	select {
	case <-p.done:
		if p.err != nil {
			return fmt.Errorf("%s: %w%s", p.name, p.err, p.logTail())
		}
		return nil
	case <-time.After(timeout):
		p.stop(time.Second)
		return fmt.Errorf("%s: still running after %s%s", p.name, timeout, p.logTail())
	}
}

// stop sends SIGTERM, then SIGKILL after timeout, and waits for the exit.
func (p *proc) stop(timeout time.Duration) {
	if p.exited() {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) logTail() string {
	if p.log == "" {
		return ""
	}
	b, _ := os.ReadFile(p.log)
	s := strings.TrimSpace(string(b))
	if len(s) > 2000 {
		s = "..." + s[len(s)-2000:]
	}
	if s == "" {
		return ""
	}
	return "\n--- " + p.log + " ---\n" + s
}

// run runs a command to completion and returns its combined output.
func run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// netns is a network namespace the benchmark created, "bpfsupbench-<id>-<role>".
type netns struct {
	name, path string
}

func newNetns(id, role string) (*netns, error) {
	ns := &netns{name: "bpfsupbench-" + id + "-" + role}
	ns.path = "/run/netns/" + ns.name
	// Registered first: ip netns add can fail after making the mount point.
	cleanups.add(func() {
		if _, err := os.Lstat(ns.path); err == nil {
			if _, err := run("ip", "netns", "del", ns.name); err != nil {
				fmt.Fprintf(os.Stderr, "bench: cleanup: %v\n", err)
			}
		}
	})
	if _, err := run("ip", "netns", "add", ns.name); err != nil {
		return nil, err
	}
	if _, err := run("ip", "-n", ns.name, "link", "set", "lo", "up"); err != nil {
		return nil, err
	}
	return ns, nil
}

// ipBatch runs ip commands inside the namespace, one per line, in one process.
func (ns *netns) ipBatch(lines []string) error {
	cmd := exec.Command("ip", "-n", ns.name, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip -n %s -batch: %w: %s", ns.name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// vethPairs makes n veth pairs inside ns named prefix0..prefix(2n-1), pair k
// being prefix(2k) and prefix(2k+1), all up: 2n interfaces for XDP.
func (ns *netns) vethPairs(prefix string, n int) ([]string, error) {
	var lines, names []string
	for k := 0; k < n; k++ {
		a, b := fmt.Sprintf("%s%d", prefix, 2*k), fmt.Sprintf("%s%d", prefix, 2*k+1)
		lines = append(lines, "link add "+a+" type veth peer name "+b)
		names = append(names, a, b)
	}
	for _, n := range names {
		lines = append(lines, "link set "+n+" up")
	}
	return names, ns.ipBatch(lines)
}

// xdpInfo is what the kernel says is attached to an interface's XDP hook.
type xdpInfo struct {
	ProgID   int
	ProgName string
	Mode     int // 1 native (driver), 2 generic, 3 offload
}

// xdpProgs reads the XDP program of every interface in ns from netlink.
func (ns *netns) xdpProgs() (map[string]xdpInfo, error) {
	out, err := run("ip", "-n", ns.name, "-j", "link", "show")
	if err != nil {
		return nil, err
	}
	var links []struct {
		Ifname string `json:"ifname"`
		XDP    *struct {
			Mode int `json:"mode"`
			Prog *struct {
				ID   int    `json:"id"`
				Name string `json:"name"`
			} `json:"prog"`
		} `json:"xdp"`
	}
	if err := json.Unmarshal([]byte(out), &links); err != nil {
		return nil, fmt.Errorf("parse ip -j link: %w", err)
	}
	m := map[string]xdpInfo{}
	for _, l := range links {
		if l.XDP != nil && l.XDP.Prog != nil {
			m[l.Ifname] = xdpInfo{ProgID: l.XDP.Prog.ID, ProgName: l.XDP.Prog.Name, Mode: l.XDP.Mode}
		}
	}
	return m, nil
}

// checkAttached verifies that ifaces[i] runs program progs[i] in native mode
// and that no other interface of ns has an XDP program.
func (ns *netns) checkAttached(ifaces, progs []string) error {
	got, err := ns.xdpProgs()
	if err != nil {
		return err
	}
	for i, ifn := range ifaces {
		x, ok := got[ifn]
		switch {
		case !ok:
			return fmt.Errorf("%s: no XDP program attached", ifn)
		case x.ProgName != progs[i]:
			return fmt.Errorf("%s: XDP program %q attached, want %q", ifn, x.ProgName, progs[i])
		case x.Mode != 1:
			return fmt.Errorf("%s: XDP program in mode %d, want native (1)", ifn, x.Mode)
		}
		delete(got, ifn)
	}
	for ifn, x := range got {
		return fmt.Errorf("%s: unexpected XDP program %q", ifn, x.ProgName)
	}
	return nil
}

// checkDetached waits until no interface of ns has an XDP program. The wait
// is needed after unpinning links: bpffs frees an unlinked inode after an
// RCU grace period, and the link, with its attachment, goes then, a moment
// after unlink returned.
func (ns *netns) checkDetached() error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := ns.checkAttached(nil, nil)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// inNetns runs fn on an OS thread switched into ns: sockets fn makes belong
// to ns for their whole life. The thread is discarded afterwards rather than
// switched back, which is simpler and safe.
func inNetns(ns *netns, fn func() error) error {
	f, err := os.Open(ns.path)
	if err != nil {
		return err
	}
	defer f.Close()
	res := make(chan error, 1)
	go func() {
		lockThreadForever()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			res <- fmt.Errorf("enter netns %s: %w", ns.name, err)
			return
		}
		res <- fn()
	}()
	return <-res
}

// readyEvent is one report of benchchild.
type readyEvent struct {
	kind string // "start" or "die"
	pid  int
	ts   int64 // CLOCK_MONOTONIC, ns
	nfds int
}

// readySock receives benchchild's reports.
type readySock struct {
	path   string
	conn   *net.UnixConn
	events chan readyEvent
	// since: reports older than this (CLOCK_MONOTONIC) are from an earlier
	// run, late through the socket, and are dropped.
	since atomic.Int64
}

func listenReady(dir string) (*readySock, error) {
	path := filepath.Join(dir, "ready.sock")
	_ = os.Remove(path)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("ready socket: %w", err)
	}
	// 1000 restarts make 2000 reports in a few seconds; a deep buffer keeps
	// a slow reader from ever blocking a child.
	_ = conn.SetReadBuffer(4 << 20)
	r := &readySock{path: path, conn: conn, events: make(chan readyEvent, 8192)}
	go r.read()
	cleanups.add(func() { conn.Close(); os.Remove(path) })
	return r, nil
}

func (r *readySock) read() {
	buf := make([]byte, 256)
	for {
		n, err := r.conn.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				close(r.events)
				return
			}
			continue
		}
		f := strings.Fields(string(buf[:n]))
		if len(f) < 3 {
			continue
		}
		ev := readyEvent{kind: f[0]}
		ev.pid, _ = strconv.Atoi(f[1])
		ev.ts, _ = strconv.ParseInt(f[2], 10, 64)
		if len(f) > 3 {
			ev.nfds, _ = strconv.Atoi(f[3])
		}
		r.events <- ev
	}
}

// drain drops reports left over from earlier runs: those queued now, and
// those that arrive later but were sent before now.
func (r *readySock) drain() {
	r.since.Store(mono())
	for {
		select {
		case <-r.events:
		default:
			return
		}
	}
}

// waitStart waits for the next child's start report. It gives up when p (if
// not nil) exits first, which means bpfsup failed before starting the child.
func (r *readySock) waitStart(p *proc, timeout time.Duration) (readyEvent, error) {
	var done <-chan struct{}
	if p != nil {
		done = p.done
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case ev := <-r.events:
			if ev.kind != "start" || ev.ts < r.since.Load() {
				continue
			}
			return ev, checkFDs(ev)
		case <-done:
			// The report is sent before the child exits, and so before
			// bpfsup exits, but the reader may not have passed it on yet.
			grace := time.After(500 * time.Millisecond)
		drain:
			for {
				select {
				case ev := <-r.events:
					if ev.kind == "start" && ev.ts >= r.since.Load() {
						return ev, checkFDs(ev)
					}
				case <-grace:
					break drain
				}
			}
			return readyEvent{}, fmt.Errorf("%s exited before its child started: %v%s", p.name, p.err, p.logTail())
		case <-t.C:
			tail := ""
			if p != nil {
				tail = p.logTail()
			}
			return readyEvent{}, fmt.Errorf("no child started within %s%s", timeout, tail)
		}
	}
}

func checkFDs(ev readyEvent) error {
	if ev.nfds < 0 {
		return fmt.Errorf("child %d: broken fd hand-off", ev.pid)
	}
	return nil
}

// procStat reads utime+stime (clock ticks) of pid.
func procStat(pid int) (ticks int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces: fields count from after its ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return u + st, nil
}

// procStatus reads a "kB" field of /proc/PID/status (VmRSS, VmHWM) in bytes.
func procStatus(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		k, v, ok := bytes.Cut(line, []byte(":"))
		if !ok || string(k) != field {
			continue
		}
		f := strings.Fields(string(v))
		if len(f) == 0 {
			break
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			break
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("/proc/%d/status: no %s", pid, field)
}

// lockThreadForever wires the goroutine to its OS thread for good: the
// thread ends with the goroutine, so a thread switched into another
// namespace never runs anything else.
func lockThreadForever() { runtime.LockOSThread() }

func readFileString(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}
