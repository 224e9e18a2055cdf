package supervisor

// Handing the listening sockets over across a re-exec (see reexec.go): the
// sockets stay open through the exec, so that what connects meanwhile waits
// in their backlog for the new program. What was already accepted is
// answered first: a connection the old program holds when it execs would be
// cut. So before the exec each server stops accepting, without closing its
// socket (pausableListener), and waits until the connections it took are
// done (busyConns).

import (
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// quiesceTimeout bounds the wait for connections being answered before a
// re-exec: a client that never reads its answer does not stop an upgrade.
const quiesceTimeout = 5 * time.Second

// pauser holds a server's accept (or read) loop without closing its socket:
// pause sets the socket's deadline, and the loop, seeing it pass, asks hold,
// which waits for resume.
type pauser struct {
	setDeadline func(time.Time) error
	mu          sync.Mutex
	paused      chan struct{} // closed by resume; nil when not paused
	parked      chan struct{} // this pause's: hold tells pause it holds
}

func newPauser(setDeadline func(time.Time) error) *pauser {
	return &pauser{setDeadline: setDeadline}
}

// hold is for the loop, with the error of its accept or read: when the error
// is the deadline of a pause, it waits for the resume and reports true (try
// again).
func (p *pauser) hold(err error) bool {
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	p.mu.Lock()
	resumed, parked := p.paused, p.parked
	p.mu.Unlock()
	if resumed == nil {
		return true // resumed in between
	}
	select {
	case parked <- struct{}{}:
	default:
	}
	<-resumed
	return true
}

// pause makes the loop hold, and returns once it does or timeout passed:
// what it accepted or read before is in its server's hands by then, since a
// server hands over one connection or message before it takes the next.
func (p *pauser) pause(timeout time.Duration) {
	p.mu.Lock()
	if p.paused != nil {
		p.mu.Unlock()
		return
	}
	p.paused = make(chan struct{})
	// A channel per pause: a hold that comes after a pause gave up waiting
	// cannot answer the next one.
	parked := make(chan struct{}, 1)
	p.parked = parked
	p.mu.Unlock()
	_ = p.setDeadline(time.Now())
	select {
	case <-parked:
	case <-time.After(timeout):
	}
}

// resume lets the loop go on.
func (p *pauser) resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused == nil {
		return
	}
	_ = p.setDeadline(time.Time{})
	close(p.paused)
	p.paused, p.parked = nil, nil
}

// deadlineListener is what both *net.UnixListener and *net.TCPListener are.
type deadlineListener interface {
	net.Listener
	SetDeadline(time.Time) error
}

// pausableListener is a listener whose Accept can be held without closing
// the socket.
type pausableListener struct {
	deadlineListener
	*pauser
}

func newPausableListener(l deadlineListener) *pausableListener {
	return &pausableListener{deadlineListener: l, pauser: newPauser(l.SetDeadline)}
}

// Accept accepts, and holds while the listener is paused.
func (p *pausableListener) Accept() (net.Conn, error) {
	for {
		c, err := p.deadlineListener.Accept()
		if err == nil || !p.hold(err) {
			return c, err
		}
	}
}

// busyConns are the connections a server is answering.
type busyConns struct {
	mu      sync.Mutex
	conns   map[net.Conn]bool
	changed chan struct{}
}

func newBusyConns() *busyConns {
	return &busyConns{conns: map[net.Conn]bool{}, changed: make(chan struct{}, 1)}
}

// mark says whether c is busy.
func (b *busyConns) mark(c net.Conn, busy bool) {
	b.mu.Lock()
	if busy {
		b.conns[c] = true
	} else {
		delete(b.conns, c)
	}
	b.mu.Unlock()
	select {
	case b.changed <- struct{}{}:
	default:
	}
}

// wait returns when no connection is busy, or false after timeout.
func (b *busyConns) wait(timeout time.Duration) bool {
	deadline := time.After(timeout)
	for {
		b.mu.Lock()
		n := len(b.conns)
		b.mu.Unlock()
		if n == 0 {
			return true
		}
		select {
		case <-b.changed:
		case <-deadline:
			return false
		}
	}
}
