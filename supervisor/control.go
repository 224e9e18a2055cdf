package supervisor

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bpfsup/bpfsup/control"
	"github.com/bpfsup/bpfsup/internal/quiesce"
)

type controlServer struct {
	l       *quiesce.Listener
	path    string
	reloads chan<- reloadRequest
	status  func() []byte
	busy    *quiesce.Busy
	// quiet is closed while the control socket is handed over (quiesce):
	// a reload waiting for the loop then gets an error instead.
	mu    sync.Mutex
	quiet chan struct{}
}

func newControl(l *net.UnixListener, path string, reloads chan<- reloadRequest, status func() []byte) *controlServer {
	return &controlServer{l: quiesce.NewListener(l), path: path, reloads: reloads, status: status, busy: quiesce.NewBusy(), quiet: make(chan struct{})}
}

// listenControl listens on the control socket, or serves the listener
// inherited across a re-exec when it is the socket it should be.
func listenControl(stateDir string, reloads chan<- reloadRequest, status func() []byte, inherited *os.File) (*controlServer, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, err
	}
	path := control.Socket(stateDir, os.Getpid())
	if inherited != nil {
		l, err := net.FileListener(inherited)
		inherited.Close()
		if ul, ok := l.(*net.UnixListener); ok && err == nil && ul.Addr().String() == path {
			removeStaleControlSockets(stateDir, path)
			return newControl(ul, path, reloads, status), nil
		}
		if l != nil {
			l.Close()
		}
	}
	removeStaleControlSockets(stateDir, "")
	_ = os.Remove(path)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	_ = os.Chmod(path, 0o600)
	return newControl(l, path, reloads, status), nil
}

// removeStaleControlSockets removes the control sockets that supervisors
// killed with SIGKILL left behind: nobody listens on them any more. Without
// this, every crash would leave one in the state directory for good. own is
// this supervisor's, not to be dialled.
func removeStaleControlSockets(stateDir, own string) {
	paths, _ := filepath.Glob(filepath.Join(stateDir, "supervisor-*.sock"))
	for _, p := range paths {
		if p == own {
			continue
		}
		conn, err := net.DialTimeout("unix", p, time.Second)
		if err == nil {
			conn.Close()
			continue
		}
		if errors.Is(err, syscall.ECONNREFUSED) {
			_ = os.Remove(p)
		}
	}
}

func (c *controlServer) serve() error {
	for {
		conn, err := c.l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		c.busy.Mark(conn, true)
		go c.handle(conn.(*net.UnixConn))
	}
}

// quiesce stops taking requests and waits until those taken are answered,
// for a re-exec; a reload among them is refused, since the loop that would
// make it is the one re-executing.
func (c *controlServer) quiesce() {
	c.mu.Lock()
	close(c.quiet)
	c.mu.Unlock()
	c.l.Pause(quiesce.Timeout)
	c.busy.Wait(quiesce.Timeout)
}

// resume takes requests again after a re-exec that did not happen.
func (c *controlServer) resume() {
	c.mu.Lock()
	c.quiet = make(chan struct{})
	c.mu.Unlock()
	c.l.Resume()
}

func (c *controlServer) quieted() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.quiet
}

func (c *controlServer) handle(conn *net.UnixConn) {
	defer c.busy.Mark(conn, false)
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil && line == "" {
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	var reply control.Reply
	switch strings.TrimSpace(line) {
	case "reload":
		start := time.Now()
		ch := make(chan error, 1)
		report := &control.ReloadReport{}
		select {
		case c.reloads <- reloadRequest{reason: "bpfsup reload", reply: ch, report: report}:
			if err := <-ch; err != nil {
				reply.Error = err.Error()
			} else {
				reply.OK, reply.Reload = true, report
			}
		case <-c.quieted():
			reply.Error = "bpfsup is re-executing itself (SIGUSR2) and made no reload; ask again once it is back"
		}
		reply.Took = time.Since(start).String()
	case "status":
		reply.OK, reply.Status = true, c.status()
	default:
		reply.Error = fmt.Sprintf("unknown request %q", strings.TrimSpace(line))
	}
	_ = json.NewEncoder(conn).Encode(reply)
}

func (c *controlServer) close() {
	c.l.Close()
	os.Remove(c.path)
}

// statusJSON is the supervisor's runtime status for the control socket.
func (s *supervisor) statusJSON() []byte {
	if b := s.runtime.Load(); b != nil {
		return *b
	}
	return []byte("{}")
}
