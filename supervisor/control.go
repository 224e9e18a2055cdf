package supervisor

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ControlSocket is the path of the control socket of the supervisor with
// pid in stateDir. `bpfsup reload` finds the pid in the manifests.
func ControlSocket(stateDir string, pid int) string {
	return filepath.Join(stateDir, "supervisor-"+strconv.Itoa(pid)+".sock")
}

// ControlReply is the answer to a control request, one JSON line.
type ControlReply struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// Took is how long the reload took.
	Took string `json:"took,omitempty"`
	// Reload says what a reload did, when it succeeded.
	Reload *ReloadReport `json:"reload,omitempty"`
	// Status is the supervisor's status, for "status".
	Status json.RawMessage `json:"status,omitempty"`
}

type control struct {
	l       *net.UnixListener
	path    string
	reloads chan<- reloadRequest
	status  func() []byte
}

func listenControl(stateDir string, reloads chan<- reloadRequest, status func() []byte) (*control, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, err
	}
	removeStaleControlSockets(stateDir)
	path := ControlSocket(stateDir, os.Getpid())
	_ = os.Remove(path)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	_ = os.Chmod(path, 0o600)
	return &control{l: l, path: path, reloads: reloads, status: status}, nil
}

// removeStaleControlSockets removes the control sockets that supervisors
// killed with SIGKILL left behind: nobody listens on them any more. Without
// this, every crash would leave one in the state directory for good.
func removeStaleControlSockets(stateDir string) {
	paths, _ := filepath.Glob(filepath.Join(stateDir, "supervisor-*.sock"))
	for _, p := range paths {
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

func (c *control) serve() error {
	for {
		conn, err := c.l.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go c.handle(conn)
	}
}

func (c *control) handle(conn *net.UnixConn) {
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil && line == "" {
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	var reply ControlReply
	switch strings.TrimSpace(line) {
	case "reload":
		start := time.Now()
		ch := make(chan error, 1)
		report := &ReloadReport{}
		c.reloads <- reloadRequest{reason: "bpfsup reload", reply: ch, report: report}
		if err := <-ch; err != nil {
			reply.Error = err.Error()
		} else {
			reply.OK, reply.Reload = true, report
		}
		reply.Took = time.Since(start).String()
	case "status":
		reply.OK, reply.Status = true, c.status()
	default:
		reply.Error = fmt.Sprintf("unknown request %q", strings.TrimSpace(line))
	}
	_ = json.NewEncoder(conn).Encode(reply)
}

func (c *control) close() {
	c.l.Close()
	os.Remove(c.path)
}

// Request sends one request to the supervisor's control socket and returns
// its reply.
func Request(socket, req string, timeout time.Duration) (*ControlReply, error) {
	conn, err := net.DialTimeout("unix", socket, time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect to supervisor at %s: %w", socket, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write([]byte(req + "\n")); err != nil {
		return nil, err
	}
	var reply ControlReply
	if err := json.NewDecoder(conn).Decode(&reply); err != nil {
		return nil, fmt.Errorf("read reply of supervisor: %w", err)
	}
	return &reply, nil
}
