package testutil

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Datagrams sent by UDPSender are DatagramSize bytes: the 8 ASCII bytes of
// datagramMagic, then the sequence number as a big-endian uint64. Sequence
// numbers start at 1 and grow by one per datagram the sender tries to send.
const (
	DatagramSize  = 16
	datagramMagic = "bpfsup01"
)

func encodeDatagram(buf []byte, seq uint64) []byte {
	buf = append(buf[:0], datagramMagic...)
	return binary.BigEndian.AppendUint64(buf, seq)
}

// decodeDatagram returns the sequence number of a datagram from UDPSender.
func decodeDatagram(b []byte) (seq uint64, ok bool) {
	if len(b) != DatagramSize || !bytes.HasPrefix(b, []byte(datagramMagic)) {
		return 0, false
	}
	return binary.BigEndian.Uint64(b[len(datagramMagic):]), true
}

// UDPReceiver counts the datagrams arriving on a UDP socket inside a
// network namespace. Its methods are safe for concurrent use.
type UDPReceiver struct {
	conn    *net.UDPConn
	ns      *Netns
	port    int
	count   atomic.Uint64
	lastSeq atomic.Uint64
	done    chan struct{}
	err     error // first receive error other than closing; read after done
	once    sync.Once
}

// StartUDPReceiver listens on 0.0.0.0:port (IPv4) inside ns, port 0 meaning
// any free port (see Port), and counts every datagram that arrives until
// Stop, which Cleanup calls.
func StartUDPReceiver(tb testing.TB, ns *Netns, port int) *UDPReceiver {
	tb.Helper()
	r := &UDPReceiver{ns: ns, done: make(chan struct{})}
	// The socket belongs to the namespace of the thread that creates it.
	err := ns.Do(func() (err error) {
		r.conn, err = net.ListenUDP("udp4", &net.UDPAddr{Port: port})
		return err
	})
	if err != nil {
		tb.Fatalf("udp receiver in netns %s: %v", ns.Name, err)
	}
	// A sender that fell behind (a loaded machine, an emulated VM) catches
	// up in bursts; the default receive buffer holds a few hundred of these
	// datagrams and would drop the rest where the tests expect none lost.
	if err := forceReadBuffer(r.conn, 16<<20); err != nil {
		r.conn.Close()
		tb.Fatalf("udp receiver in netns %s: receive buffer: %v", ns.Name, err)
	}
	r.port = r.conn.LocalAddr().(*net.UDPAddr).Port
	go r.receive()
	tb.Cleanup(func() {
		if err := r.Stop(); err != nil {
			tb.Errorf("udp receiver: %v", err)
		}
	})
	return r
}

// forceReadBuffer sets the socket's receive buffer to n bytes, past
// net.core.rmem_max (SO_RCVBUFFORCE, as root).
func forceReadBuffer(c *net.UDPConn, n int) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
	}); err != nil {
		return err
	}
	return serr
}

func (r *UDPReceiver) receive() {
	defer close(r.done)
	buf := make([]byte, 64<<10)
	for {
		n, err := r.conn.Read(buf)
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			r.err = fmt.Errorf("receive in netns %s: %w", r.ns.Name, err)
			return
		}
		if seq, ok := decodeDatagram(buf[:n]); ok {
			r.lastSeq.Store(seq)
		}
		r.count.Add(1)
	}
}

// Port is the UDP port the receiver listens on.
func (r *UDPReceiver) Port() int { return r.port }

// Count is the number of datagrams received so far, of any content.
func (r *UDPReceiver) Count() uint64 { return r.count.Load() }

// LastSeq is the sequence number of the last datagram from a UDPSender that
// arrived, 0 if none has.
func (r *UDPReceiver) LastSeq() uint64 { return r.lastSeq.Load() }

// WaitCount waits until at least n datagrams have arrived, and fails the
// test if they have not after timeout.
func (r *UDPReceiver) WaitCount(tb testing.TB, n uint64, timeout time.Duration) {
	tb.Helper()
	if !Poll(timeout, func() bool { return r.Count() >= n }) {
		tb.Fatalf("timed out after %v waiting for %d datagrams on port %d in netns %s: got %d",
			timeout, n, r.port, r.ns.Name, r.Count())
	}
}

// Stop closes the socket and returns once the receiving goroutine has ended;
// Count does not change afterwards. It returns the error that ended
// receiving early, if any. Stop may be called more than once.
func (r *UDPReceiver) Stop() error {
	r.once.Do(func() { r.conn.Close() })
	<-r.done
	return r.err
}

// UDPSender sends numbered datagrams (see DatagramSize) at a steady rate from
// a UDP socket inside a network namespace. Its methods are safe for
// concurrent use.
type UDPSender struct {
	conn *net.UDPConn
	dst  netip.AddrPort
	rate int
	sent atomic.Uint64
	errs atomic.Uint64
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

// maxBurst bounds how many datagrams one tick sends when the sender is
// behind its rate, so that a stalled sender does not flood afterwards.
const maxBurst = 200

// StartUDPSender sends datagrams from an unconnected UDP socket inside ns to
// dst, ratePerSec per second (paced on a clock tick of at least 1ms), until
// Stop, which Cleanup calls. The first datagram leaves at once.
//
// Write errors do not stop the sender: they are counted (Errors), and the
// sequence number of a datagram that failed is skipped. Being unconnected,
// the socket does not report ICMP errors, so sending before the receiver
// listens is fine.
func StartUDPSender(tb testing.TB, ns *Netns, dst netip.AddrPort, ratePerSec int) *UDPSender {
	tb.Helper()
	if ratePerSec <= 0 {
		tb.Fatalf("udp sender: rate %d per second, want > 0", ratePerSec)
	}
	if !dst.IsValid() {
		tb.Fatalf("udp sender: invalid destination %v", dst)
	}
	s := &UDPSender{dst: dst, rate: ratePerSec, stop: make(chan struct{}), done: make(chan struct{})}
	err := ns.Do(func() (err error) {
		network := "udp4"
		if dst.Addr().Is6() && !dst.Addr().Is4In6() {
			network = "udp6"
		}
		s.conn, err = net.ListenUDP(network, nil)
		return err
	})
	if err != nil {
		tb.Fatalf("udp sender in netns %s: %v", ns.Name, err)
	}
	go s.send()
	tb.Cleanup(s.Stop)
	return s
}

func (s *UDPSender) send() {
	defer close(s.done)
	interval := max(time.Second/time.Duration(s.rate), time.Millisecond)
	ticker := time.NewTicker(interval)
	defer ticker.Stop()

	start := time.Now()
	buf := make([]byte, 0, DatagramSize)
	var seq uint64
	for {
		due := uint64(time.Since(start).Seconds()*float64(s.rate)) + 1
		for burst := 0; seq < due && burst < maxBurst; burst++ {
			seq++
			_, err := s.conn.WriteToUDPAddrPort(encodeDatagram(buf, seq), s.dst)
			switch {
			case errors.Is(err, net.ErrClosed):
				return
			case err != nil:
				s.errs.Add(1)
			default:
				s.sent.Add(1)
			}
		}
		select {
		case <-s.stop:
			return
		case <-ticker.C:
		}
	}
}

// Sent is the number of datagrams handed to the kernel so far.
func (s *UDPSender) Sent() uint64 { return s.sent.Load() }

// Errors is the number of datagrams whose send failed.
func (s *UDPSender) Errors() uint64 { return s.errs.Load() }

// Stop stops sending and closes the socket; Sent does not change after it
// returns. Stop may be called more than once.
func (s *UDPSender) Stop() {
	s.once.Do(func() {
		close(s.stop)
		<-s.done
		s.conn.Close()
	})
}
