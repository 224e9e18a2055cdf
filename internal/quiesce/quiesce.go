// Package quiesce holds a server's socket across a re-exec of the program:
// the sockets stay open through the exec, so that what connects meanwhile
// waits in their backlog for the new program. What was already accepted is
// answered first: a connection the old program holds when it execs would be
// cut. So before the exec each server stops accepting, without closing its
// socket (Listener, Pauser), and waits until the connections it took are
// done (Busy).
package quiesce

import (
	"errors"
	"net"
	"os"
	"sync"
	"time"
)

// Timeout bounds the wait for connections being answered before a
// re-exec: a client that never reads its answer does not stop an upgrade.
const Timeout = 5 * time.Second

// Pauser holds a server's accept (or read) loop without closing its socket:
// Pause sets the socket's deadline, and the loop, seeing it pass, asks Hold,
// which waits for Resume.
type Pauser struct {
	setDeadline func(time.Time) error
	mu          sync.Mutex
	paused      chan struct{} // closed by resume; nil when not paused
	parked      chan struct{} // this pause's: hold tells pause it holds
}

// NewPauser makes a Pauser of the socket whose deadline setDeadline sets.
func NewPauser(setDeadline func(time.Time) error) *Pauser {
	return &Pauser{setDeadline: setDeadline}
}

// Hold is for the loop, with the error of its accept or read: when the error
// is the deadline of a pause, it waits for the resume and reports true (try
// again).
func (p *Pauser) Hold(err error) bool {
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

// Pause makes the loop hold, and returns once it does or timeout passed:
// what it accepted or read before is in its server's hands by then, since a
// server hands over one connection or message before it takes the next.
func (p *Pauser) Pause(timeout time.Duration) {
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

// Resume lets the loop go on.
func (p *Pauser) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused == nil {
		return
	}
	_ = p.setDeadline(time.Time{})
	close(p.paused)
	p.paused, p.parked = nil, nil
}

// DeadlineListener is what both *net.UnixListener and *net.TCPListener are.
type DeadlineListener interface {
	net.Listener
	SetDeadline(time.Time) error
}

// Listener is a listener whose Accept can be held without closing
// the socket.
type Listener struct {
	DeadlineListener
	*Pauser
}

// NewListener makes l pausable.
func NewListener(l DeadlineListener) *Listener {
	return &Listener{DeadlineListener: l, Pauser: NewPauser(l.SetDeadline)}
}

// Accept accepts, and holds while the listener is paused.
func (p *Listener) Accept() (net.Conn, error) {
	for {
		c, err := p.DeadlineListener.Accept()
		if err == nil || !p.Hold(err) {
			return c, err
		}
	}
}

// Busy is the set of connections a server is answering.
type Busy struct {
	mu      sync.Mutex
	conns   map[net.Conn]bool
	changed chan struct{}
}

// NewBusy makes an empty set.
func NewBusy() *Busy {
	return &Busy{conns: map[net.Conn]bool{}, changed: make(chan struct{}, 1)}
}

// Mark says whether c is busy.
func (b *Busy) Mark(c net.Conn, busy bool) {
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

// Len is how many connections are busy.
func (b *Busy) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.conns)
}

// Wait returns when no connection is busy, or false after timeout.
func (b *Busy) Wait(timeout time.Duration) bool {
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
