package supervisor

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// notifyReloading tells systemd a reload started (Type=notify-reload's
// protocol, harmless under plain notify).
func notifyReloading() (bool, error) {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	usec := ts.Sec*1e6 + ts.Nsec/1e3
	return daemon.SdNotify(false, "RELOADING=1\nMONOTONIC_USEC="+strconv.FormatInt(usec, 10))
}

func (s *supervisor) notifyReady() {
	_, _ = daemon.SdNotify(false, "READY=1")
	s.notifyStatus()
}

// notifySocket is the notify socket bpfsup gives the child with
// --notify=child: the child's READY=1 becomes bpfsup's.
type notifySocket struct {
	path string
	conn *net.UnixConn
	out  chan<- string
}

func listenNotify(stateDir string, out chan<- string) (*notifySocket, error) {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, err
	}
	path := filepath.Join(stateDir, "notify-"+strconv.Itoa(os.Getpid())+".sock")
	_ = os.Remove(path)
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("child notify socket: %w", err)
	}
	// The child may run as another user.
	_ = os.Chmod(path, 0o666)
	return &notifySocket{path: path, conn: conn, out: out}, nil
}

func (n *notifySocket) serve() error {
	buf := make([]byte, 4096)
	for {
		k, _, err := n.conn.ReadFromUnix(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		select {
		case n.out <- string(buf[:k]):
		case <-time.After(time.Second):
		}
	}
}

func (n *notifySocket) close() {
	n.conn.Close()
	os.Remove(n.path)
}
