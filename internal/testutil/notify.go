package testutil

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// NotifyListener is a test's stand-in for systemd's notify socket: it
// records every line of every datagram, in order. Path is for NOTIFY_SOCKET.
type NotifyListener struct {
	Path string
	conn *net.UnixConn
	mu   sync.Mutex
	msgs []string
	done chan struct{}
}

// ListenNotify listens on a notify socket in a directory of its own (short:
// a unix socket's path has room for 107 bytes), removed at the test's end.
func ListenNotify(tb testing.TB) *NotifyListener {
	tb.Helper()
	dir, err := os.MkdirTemp("", "bpfsup-notify-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		tb.Fatalf("listen on %s: %v", path, err)
	}
	n := &NotifyListener{Path: path, conn: conn, done: make(chan struct{})}
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

// Lines are the lines received so far.
func (n *NotifyListener) Lines() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.msgs)
}

// Index is the position of the first line starting with prefix, or -1.
func (n *NotifyListener) Index(prefix string) int {
	return slices.IndexFunc(n.Lines(), func(l string) bool { return strings.HasPrefix(l, prefix) })
}

// Count is the number of lines starting with prefix.
func (n *NotifyListener) Count(prefix string) int {
	c := 0
	for _, l := range n.Lines() {
		if strings.HasPrefix(l, prefix) {
			c++
		}
	}
	return c
}

// WaitFor waits for a line starting with prefix.
func (n *NotifyListener) WaitFor(tb testing.TB, prefix string) {
	tb.Helper()
	WaitFor(tb, 10*time.Second, fmt.Sprintf("%q on the notify socket (have %q)", prefix, n.Lines()),
		func() bool { return n.Index(prefix) >= 0 })
}
