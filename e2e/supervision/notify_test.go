package supervision

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// Under systemd (NOTIFY_SOCKET and WATCHDOG_USEC set), bpfsup says READY=1
// once the objects are attached and the child runs, then STATUS= with what
// it supervises, WATCHDOG=1 every half watchdog period, and STOPPING=1 when
// it is stopped, in that order.
func TestSdNotify(t *testing.T) {
	e := testutil.MustEnv(t)
	sock := testutil.ListenNotify(t)
	marker := filepath.Join(shortDir(t), "marker")
	p := startRun(t, e, childEnv("signals", envFile+"="+marker, "NOTIFY_SOCKET="+sock.Path, "WATCHDOG_USEC=200000"),
		"-o", counterObj, "--", self(t))
	pid := waitChildPid(t, p)
	testutil.WaitFor(t, 5*time.Second, "three WATCHDOG=1", func() bool { return sock.Count("WATCHDOG=1") >= 3 })
	p.Kill(syscall.SIGTERM)
	if code := p.Wait(t, 10*time.Second); code != 42 {
		t.Errorf("bpfsup exited %d, want the child's 42", code)
	}

	lines := sock.Lines()
	t.Logf("notify messages: %q", lines)
	ready, status, watchdog, stopping := sock.Index("READY=1"), sock.Index("STATUS="), sock.Index("WATCHDOG=1"), sock.Index("STOPPING=1")
	if ready < 0 || status < 0 || watchdog < 0 || stopping < 0 {
		t.Fatalf("want READY=1, STATUS=, WATCHDOG=1 and STOPPING=1; got %q", lines)
	}
	if ready != 0 {
		t.Errorf("READY=1 is message %d, want the first: %q", ready, lines)
	}
	if !(ready < status && ready < watchdog && status < stopping && watchdog < stopping) {
		t.Errorf("out of order: READY=1 at %d, STATUS= at %d, WATCHDOG=1 at %d, STOPPING=1 at %d", ready, status, watchdog, stopping)
	}
	if c := sock.Count("READY=1"); c != 1 {
		t.Errorf("READY=1 sent %d times, want once", c)
	}
	if c := sock.Count("STOPPING=1"); c != 1 {
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
	sock := testutil.ListenNotify(t)
	release := filepath.Join(shortDir(t), "release")
	child := `systemd-notify EXTEND_TIMEOUT_USEC=30000000
echo child waiting; while [ ! -e ` + release + ` ]; do sleep 0.01; done
systemd-notify --ready --status="serving" && echo child notified || echo child notify failed
exec sleep 1000`
	p := startRun(t, e, []string{"PATH=" + os.Getenv("PATH"), "NOTIFY_SOCKET=" + sock.Path},
		"-o", counterObj, "--notify", "child", "--", "sh", "-c", child)
	p.WaitOutput(t, "child waiting", 10*time.Second)
	// bpfsup's first STATUS= comes right after it started the child.
	sock.WaitFor(t, "STATUS=objects=1")
	if i := sock.Index("READY=1"); i >= 0 {
		t.Fatalf("READY=1 sent before the child's own: %q", sock.Lines())
	}
	// The child's slow start extends the service's start timeout.
	sock.WaitFor(t, "EXTEND_TIMEOUT_USEC=30000000")
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	sock.WaitFor(t, "READY=1")
	// systemd-notify fails when its BARRIER=1 is not answered within 5s.
	p.WaitOutput(t, "child notif", 10*time.Second)
	if !strings.Contains(p.Output(), "child notified") {
		t.Errorf("systemd-notify failed in the child:\n%s", p.Output())
	}
	sock.WaitFor(t, "STATUS=child: serving")
	if c := sock.Count("READY=1"); c != 1 {
		t.Errorf("READY=1 sent %d times, want once", c)
	}
}

// The child's notify socket is abstract and its name is in /proc/net/unix:
// anyone may send to it. Only the child's own messages count (by the pid
// the kernel vouches for), or with --notify-access=all those of its
// descendants too: a READY=1 from another process, even root's, does not
// make the service ready. Before, any process of the child's user (or
// root) could.
func TestNotifyOnlyFromChild(t *testing.T) {
	for _, tt := range []struct {
		access string
		// descendant says whether a process the child started (not the
		// child itself) may notify.
		descendant bool
	}{{"main", false}, {"all", true}} {
		t.Run(tt.access, func(t *testing.T) {
			e := testutil.MustEnv(t)
			sock := testutil.ListenNotify(t)
			release := filepath.Join(shortDir(t), "release")
			// The child says where its socket is, lets a process of its own
			// (python3: it sends with its own pid) say STATUS=, and waits.
			child := `echo "child socket=$NOTIFY_SOCKET"
python3 -c 'import os, socket; s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); a = os.environ["NOTIFY_SOCKET"]; s.sendto(b"STATUS=from a descendant", "\0" + a[1:] if a.startswith("@") else a)'
echo child descendant sent
while [ ! -e ` + release + ` ]; do sleep 0.01; done
exec sleep 1000`
			testutil.RequireTool(t, "python3")
			p := startRun(t, e, []string{"PATH=" + os.Getenv("PATH"), "NOTIFY_SOCKET=" + sock.Path},
				"-o", counterObj, "--notify", "child", "--notify-access", tt.access, "--", "sh", "-c", child)
			p.WaitOutput(t, "child descendant sent", 10*time.Second)
			m := regexp.MustCompile(`child socket=(\S+)`).FindStringSubmatch(p.Output())
			if m == nil {
				t.Fatalf("the child did not say its notify socket:\n%s", p.Output())
			}
			// Another process (this test, as root) claims the child is ready.
			addr := &net.UnixAddr{Name: m[1], Net: "unixgram"}
			conn, err := net.DialUnix("unixgram", nil, addr)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Write([]byte("READY=1\nSTATUS=spoofed")); err != nil {
				t.Fatal(err)
			}
			conn.Close()
			testutil.WaitFor(t, 10*time.Second, "bpfsup to refuse the test's message", func() bool {
				return strings.Contains(p.Output(), "ignoring a message on the child's notify socket")
			})
			if tt.descendant {
				sock.WaitFor(t, "STATUS=child: from a descendant")
			} else if n := strings.Count(p.Output(), "ignoring a message on the child's notify socket"); n < 2 {
				// The descendant's came first: both refused.
				testutil.WaitFor(t, 10*time.Second, "bpfsup to refuse the descendant's message too", func() bool {
					return strings.Count(p.Output(), "ignoring a message on the child's notify socket") >= 2
				})
			}
			if sock.Index("READY=1") >= 0 || sock.Index("STATUS=child: spoofed") >= 0 {
				t.Fatalf("a message of another process than the child reached systemd: %q", sock.Lines())
			}
			if !tt.descendant && sock.Index("STATUS=child: from a descendant") >= 0 {
				t.Fatalf("with --notify-access=main, the descendant's message reached systemd: %q", sock.Lines())
			}
			if err := os.WriteFile(release, nil, 0o644); err != nil {
				t.Fatal(err)
			}
		})
	}
}
