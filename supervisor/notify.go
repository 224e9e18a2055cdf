package supervisor

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/quiesce"
)

// notifyReloading tells systemd a reload started (Type=notify-reload's
// protocol, harmless under plain notify).
func notifyReloading() (bool, error) {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	usec := ts.Sec*1e6 + ts.Nsec/1e3
	return daemon.SdNotify(false, "RELOADING=1\nMONOTONIC_USEC="+strconv.FormatInt(usec, 10))
}

// notifyReady ends a reload (RELOADING=1) for systemd. Before the child
// said READY=1 (--notify=child), the service is not ready yet and a reload
// must not make it so.
func (s *supervisor) notifyReady() {
	if s.ready {
		_, _ = daemon.SdNotify(false, "READY=1")
	}
	s.notifyStatus()
}

// notifySocket is the notify socket bpfsup gives the child with
// --notify=child: the child's READY=1 becomes bpfsup's.
//
// It is an abstract unix socket ("@bpfsup-notify-..."), which sd_notify(3),
// python-systemd and systemd-notify all accept: the child may run as another
// user who cannot reach a socket file in bpfsup's 0700 state directory.
// Anyone in the network namespace may send to an abstract socket, and its
// name is in /proc/net/unix for all to read, so a message is accepted only
// from the child itself, by the pid the kernel vouches for with
// SCM_CREDENTIALS, as systemd's NotifyAccess=main does (or from the child
// and its descendants with notify_access = "all"), and from root, bpfsup's
// own user or the child's. systemd-notify run by the child as root sends
// with the child's pid; run as another user it sends with its own, and
// needs "all", as under systemd.
type notifySocket struct {
	path string // NOTIFY_SOCKET for the child
	conn *net.UnixConn
	p    *quiesce.Pauser // holds serve across a re-exec
	out  chan<- notifyMsg
	uids []uint32 // senders' users accepted
	// allow says whether the process pid may notify.
	allow func(pid int32) bool
	// refused counts the messages refused, to log the first few.
	refused int
	log     *slog.Logger
}

// notifyMsg is one datagram from the child. Files are fds it sent along
// (BARRIER=1 sends one and waits until the receiver closes it); the loop
// closes them once it has handled the message, so that a barrier returns
// only after what the child sent before it has been acted on.
type notifyMsg struct {
	text  string
	files []int
}

func (m notifyMsg) close() {
	for _, fd := range m.files {
		unix.Close(fd)
	}
}

// listenNotify listens on a new notify socket, or on the one inherited
// across a re-exec: the running child's NOTIFY_SOCKET names that one.
func listenNotify(out chan<- notifyMsg, childUID *uint32, allow func(pid int32) bool, log *slog.Logger, inherited *os.File) (*notifySocket, error) {
	conn := inheritedNotify(inherited)
	if conn == nil {
		var rnd [8]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return nil, fmt.Errorf("child notify socket: %w", err)
		}
		// A leading '@' makes Go (and every sd_notify client) use the
		// abstract namespace: no file, nothing to remove after a crash.
		path := "@" + notifyPrefix + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(rnd[:])
		var err error
		conn, err = net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
		if err != nil {
			return nil, fmt.Errorf("child notify socket: %w", err)
		}
	}
	path := conn.LocalAddr().String()
	raw, err := conn.SyscallConn()
	if err == nil {
		cerr := raw.Control(func(fd uintptr) {
			err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
		})
		if cerr != nil {
			err = cerr
		}
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("child notify socket: pass credentials: %w", err)
	}
	uids := []uint32{0, uint32(os.Geteuid())}
	if childUID != nil {
		uids = append(uids, *childUID)
	}
	return &notifySocket{path: path, conn: conn, p: quiesce.NewPauser(conn.SetReadDeadline), out: out, uids: uids, allow: allow, log: log}, nil
}

const notifyPrefix = "bpfsup-notify-"

// inheritedNotify is f as the notify socket, or nil when it is not one.
func inheritedNotify(f *os.File) *net.UnixConn {
	if f == nil {
		return nil
	}
	defer f.Close()
	c, err := net.FilePacketConn(f)
	if err != nil {
		return nil
	}
	uc, ok := c.(*net.UnixConn)
	if !ok || !strings.HasPrefix(uc.LocalAddr().String(), "@"+notifyPrefix) {
		c.Close()
		return nil
	}
	return uc
}

func (n *notifySocket) serve() error {
	buf := make([]byte, 4096)
	// Room for the credentials and a few fds; sd_notify sends at most one.
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred)+unix.CmsgSpace(16*4))
	for {
		k, ok, _, _, err := n.conn.ReadMsgUnix(buf, oob)
		if err != nil {
			if n.p.Hold(err) {
				continue
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("child notify socket: %w", err)
		}
		msg, cred := n.parse(buf[:k], oob[:ok])
		if why := n.refuse(cred); why != "" {
			if n.refused++; n.refused <= 10 {
				args := []any{"why", why}
				if cred != nil {
					args = append(args, "pid", cred.Pid, "uid", cred.Uid)
				}
				n.log.Warn("ignoring a message on the child's notify socket", args...)
			}
			msg.close()
			continue
		}
		select {
		case n.out <- msg:
		case <-time.After(time.Second):
			// The loop is busy: drop it rather than block the child's
			// barrier for ever.
			msg.close()
		}
	}
}

// parse takes the fds and the sender's credentials out of a datagram.
func (n *notifySocket) parse(data, oob []byte) (msg notifyMsg, cred *unix.Ucred) {
	msg.text = string(data)
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return msg, nil
	}
	for _, c := range cmsgs {
		if fds, err := unix.ParseUnixRights(&c); err == nil {
			msg.files = append(msg.files, fds...)
			continue
		}
		if uc, err := unix.ParseUnixCredentials(&c); err == nil {
			cred = uc
		}
	}
	return msg, cred
}

// refuse says why the sender with cred may not notify, or "" when it may.
func (n *notifySocket) refuse(cred *unix.Ucred) string {
	if cred == nil {
		return "no credentials"
	}
	if !slices.Contains(n.uids, cred.Uid) {
		return "not the child's user"
	}
	if !n.allow(cred.Pid) {
		return "not the child (notify_access)"
	}
	return ""
}

// mayNotify says whether pid may send to the child's notify socket: the
// child's pid itself, or with all, one of its descendants.
func mayNotify(pid, child int32, all bool) bool {
	if pid <= 0 || child <= 0 {
		return false
	}
	if pid == child {
		return true
	}
	if !all {
		return false
	}
	for range 64 { // a ppid chain deeper than this is no child's
		ppid, ok := procPPid(int(pid))
		if !ok || ppid <= 1 {
			return false
		}
		if int32(ppid) == child {
			return true
		}
		pid = int32(ppid)
	}
	return false
}

func (n *notifySocket) close() {
	n.conn.Close()
}

// childPIDs is the child's pid for the notify socket, 0 while none runs. A
// child can say READY=1 before the fork has returned its pid to bpfsup: while
// a start is under way (Starting), Load waits for its pid.
type childPIDs struct {
	mu       sync.Mutex
	cond     *sync.Cond
	pid      int32
	starting bool
}

// Starting says that a child is being started: Load waits for Store.
func (c *childPIDs) Starting() {
	c.mu.Lock()
	c.starting = true
	c.mu.Unlock()
}

// Store records the child's pid (0: none, or the start failed).
func (c *childPIDs) Store(pid int32) {
	c.mu.Lock()
	c.pid, c.starting = pid, false
	if c.cond != nil {
		c.cond.Broadcast()
	}
	c.mu.Unlock()
}

// Load is the child's pid, once a start under way has stored it.
func (c *childPIDs) Load() int32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cond == nil {
		c.cond = sync.NewCond(&c.mu)
	}
	for c.starting {
		c.cond.Wait()
	}
	return c.pid
}
