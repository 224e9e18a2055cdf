package crashtest

import (
	"encoding/binary"
	"fmt"
	"sync"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// xdpQuery asks rtnetlink, inside a network namespace, which XDP program an
// interface runs: the kernel's own view of the hook, independent of bpfsup
// and of its pins. One query takes a few microseconds, so a sampler can ask
// every millisecond.
type xdpQuery struct {
	mu  sync.Mutex
	fd  int
	seq uint32
	buf []byte
}

func newXDPQuery(tb testing.TB, ns *testutil.Netns) *xdpQuery {
	tb.Helper()
	q := &xdpQuery{fd: -1, buf: make([]byte, 64<<10)}
	err := ns.Do(func() error {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		if err != nil {
			return err
		}
		q.fd = fd
		return unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
	})
	if err == nil {
		err = unix.SetsockoptTimeval(q.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 2})
	}
	if err != nil {
		if q.fd >= 0 {
			unix.Close(q.fd)
		}
		tb.Fatalf("rtnetlink socket in netns %s: %v", ns.Name, err)
	}
	tb.Cleanup(q.close)
	return q
}

func (q *xdpQuery) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.fd >= 0 {
		unix.Close(q.fd)
		q.fd = -1
	}
}

// progID returns the id of the XDP program on interface ifindex, 0 when none
// is attached. An interface that does not exist is an error.
func (q *xdpQuery) progID(ifindex int) (uint32, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.fd < 0 {
		return 0, fmt.Errorf("xdp query closed")
	}
	q.seq++
	req := make([]byte, unix.SizeofNlMsghdr+unix.SizeofIfInfomsg)
	hdr := (*unix.NlMsghdr)(unsafe.Pointer(&req[0]))
	hdr.Len = uint32(len(req))
	hdr.Type = unix.RTM_GETLINK
	hdr.Flags = unix.NLM_F_REQUEST
	hdr.Seq = q.seq
	ifi := (*unix.IfInfomsg)(unsafe.Pointer(&req[unix.SizeofNlMsghdr]))
	ifi.Family = unix.AF_UNSPEC
	ifi.Index = int32(ifindex)
	if err := unix.Sendto(q.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("rtnetlink request: %w", err)
	}
	for {
		n, _, err := unix.Recvfrom(q.fd, q.buf, 0)
		if err != nil {
			return 0, fmt.Errorf("rtnetlink reply: %w", err)
		}
		msgs, err := parseNetlink(q.buf[:n])
		if err != nil {
			return 0, err
		}
		for _, m := range msgs {
			if m.seq != q.seq {
				continue // a late reply to an earlier request
			}
			switch m.typ {
			case unix.NLMSG_ERROR:
				if len(m.data) >= 4 {
					if errno := int32(binary.NativeEndian.Uint32(m.data)); errno != 0 {
						return 0, fmt.Errorf("rtnetlink: ifindex %d: %w", ifindex, unix.Errno(-errno))
					}
				}
				return 0, fmt.Errorf("rtnetlink: unexpected ack")
			case unix.RTM_NEWLINK:
				return xdpProgFromLink(m.data), nil
			}
		}
	}
}

type nlMsg struct {
	typ  uint16
	seq  uint32
	data []byte
}

func parseNetlink(b []byte) ([]nlMsg, error) {
	var msgs []nlMsg
	for len(b) >= unix.SizeofNlMsghdr {
		l := binary.NativeEndian.Uint32(b[0:4])
		if l < unix.SizeofNlMsghdr || int(l) > len(b) {
			return nil, fmt.Errorf("rtnetlink: bad message length %d", l)
		}
		msgs = append(msgs, nlMsg{typ: binary.NativeEndian.Uint16(b[4:6]), seq: binary.NativeEndian.Uint32(b[8:12]),
			data: b[unix.SizeofNlMsghdr:l]})
		if nlAlign(int(l)) >= len(b) {
			break
		}
		b = b[nlAlign(int(l)):]
	}
	return msgs, nil
}

func nlAlign(n int) int { return (n + 3) &^ 3 }

// attrs walks rtattrs: (len u16, type u16, value).
func attrs(b []byte, fn func(typ uint16, val []byte)) {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		if l < 4 || l > len(b) {
			return
		}
		fn(binary.NativeEndian.Uint16(b[2:4])&^unix.NLA_F_NESTED, b[4:l])
		if nlAlign(l) >= len(b) {
			return
		}
		b = b[nlAlign(l):]
	}
}

// xdpProgFromLink reads IFLA_XDP/IFLA_XDP_PROG_ID from an RTM_NEWLINK body.
func xdpProgFromLink(body []byte) uint32 {
	if len(body) < unix.SizeofIfInfomsg {
		return 0
	}
	var id uint32
	attrs(body[unix.SizeofIfInfomsg:], func(typ uint16, val []byte) {
		if typ != unix.IFLA_XDP {
			return
		}
		attrs(val, func(typ uint16, val []byte) {
			if typ == unix.IFLA_XDP_PROG_ID && len(val) >= 4 {
				id = binary.NativeEndian.Uint32(val)
			}
		})
	})
	return id
}
