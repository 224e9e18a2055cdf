package supervision

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// notifyListener is the test's stand-in for systemd's notify socket: it
// records every line of every datagram, in order.
type notifyListener struct {
	path string
	conn *net.UnixConn
	mu   sync.Mutex
	msgs []string
	done chan struct{}
}

func listenNotify(tb testing.TB) *notifyListener {
	tb.Helper()
	path := filepath.Join(shortDir(tb), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		tb.Fatalf("listen on %s: %v", path, err)
	}
	n := &notifyListener{path: path, conn: conn, done: make(chan struct{})}
	go func() {
		defer close(n.done)
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, strings.Split(strings.TrimSpace(string(buf[:k])), "\n")...)
			n.mu.Unlock()
		}
	}()
	tb.Cleanup(func() {
		conn.Close()
		<-n.done
	})
	return n
}

func (n *notifyListener) lines() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.msgs)
}

// index is the position of the first line starting with prefix, or -1.
func (n *notifyListener) index(prefix string) int {
	return slices.IndexFunc(n.lines(), func(l string) bool { return strings.HasPrefix(l, prefix) })
}

func (n *notifyListener) count(prefix string) int {
	c := 0
	for _, l := range n.lines() {
		if strings.HasPrefix(l, prefix) {
			c++
		}
	}
	return c
}

func (n *notifyListener) waitFor(tb testing.TB, prefix string) {
	tb.Helper()
	testutil.WaitFor(tb, 10*time.Second, fmt.Sprintf("%q on the notify socket (have %q)", prefix, n.lines()),
		func() bool { return n.index(prefix) >= 0 })
}

// Under systemd (NOTIFY_SOCKET and WATCHDOG_USEC set), bpfsup says READY=1
// once the objects are attached and the child runs, then STATUS= with what
// it supervises, WATCHDOG=1 every half watchdog period, and STOPPING=1 when
// it is stopped, in that order.
func TestSdNotify(t *testing.T) {
	e := testutil.MustEnv(t)
	sock := listenNotify(t)
	marker := filepath.Join(shortDir(t), "marker")
	p := startRun(t, e, childEnv("signals", envFile+"="+marker, "NOTIFY_SOCKET="+sock.path, "WATCHDOG_USEC=200000"),
		"-o", counterObj, "--", self(t))
	pid := waitChildPid(t, p)
	testutil.WaitFor(t, 5*time.Second, "three WATCHDOG=1", func() bool { return sock.count("WATCHDOG=1") >= 3 })
	p.Kill(syscall.SIGTERM)
	if code := p.Wait(t, 10*time.Second); code != 42 {
		t.Errorf("bpfsup exited %d, want the child's 42", code)
	}

	lines := sock.lines()
	t.Logf("notify messages: %q", lines)
	ready, status, watchdog, stopping := sock.index("READY=1"), sock.index("STATUS="), sock.index("WATCHDOG=1"), sock.index("STOPPING=1")
	if ready < 0 || status < 0 || watchdog < 0 || stopping < 0 {
		t.Fatalf("want READY=1, STATUS=, WATCHDOG=1 and STOPPING=1; got %q", lines)
	}
	if ready != 0 {
		t.Errorf("READY=1 is message %d, want the first: %q", ready, lines)
	}
	if !(ready < status && ready < watchdog && status < stopping && watchdog < stopping) {
		t.Errorf("out of order: READY=1 at %d, STATUS= at %d, WATCHDOG=1 at %d, STOPPING=1 at %d", ready, status, watchdog, stopping)
	}
	if c := sock.count("READY=1"); c != 1 {
		t.Errorf("READY=1 sent %d times, want once", c)
	}
	if c := sock.count("STOPPING=1"); c != 1 {
		t.Errorf("STOPPING=1 sent %d times, want once", c)
	}
	if stopping != len(lines)-1 {
		t.Errorf("messages after STOPPING=1: %q", lines[stopping+1:])
	}
	wantStatus := fmt.Sprintf("objects=1 programs=2 links=0 child=%d restarts=0", pid)
	if !strings.Contains(lines[status], wantStatus) {
		t.Errorf("first status %q, want it to say %q", lines[status], wantStatus)
	}
}

// --notify=child: READY=1 reaches systemd only once the child sends its
// own, here with systemd-notify (which also waits on a BARRIER=1 that bpfsup
// must answer); the child's STATUS= and EXTEND_TIMEOUT_USEC= are passed on
// too.
func TestNotifyChild(t *testing.T) {
	e := testutil.MustEnv(t)
	sock := listenNotify(t)
	release := filepath.Join(shortDir(t), "release")
	child := `systemd-notify EXTEND_TIMEOUT_USEC=30000000
echo child waiting; while [ ! -e ` + release + ` ]; do sleep 0.01; done
systemd-notify --ready --status="serving" && echo child notified || echo child notify failed
exec sleep 1000`
	p := startRun(t, e, []string{"PATH=" + os.Getenv("PATH"), "NOTIFY_SOCKET=" + sock.path},
		"-o", counterObj, "--notify", "child", "--", "sh", "-c", child)
	p.WaitOutput(t, "child waiting", 10*time.Second)
	// bpfsup's first STATUS= comes right after it started the child.
	sock.waitFor(t, "STATUS=objects=1")
	if i := sock.index("READY=1"); i >= 0 {
		t.Fatalf("READY=1 sent before the child's own: %q", sock.lines())
	}
	// The child's slow start extends the service's start timeout.
	sock.waitFor(t, "EXTEND_TIMEOUT_USEC=30000000")
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	sock.waitFor(t, "READY=1")
	// systemd-notify fails when its BARRIER=1 is not answered within 5s.
	p.WaitOutput(t, "child notif", 10*time.Second)
	if !strings.Contains(p.Output(), "child notified") {
		t.Errorf("systemd-notify failed in the child:\n%s", p.Output())
	}
	sock.waitFor(t, "STATUS=child: serving")
	if c := sock.count("READY=1"); c != 1 {
		t.Errorf("READY=1 sent %d times, want once", c)
	}
}
