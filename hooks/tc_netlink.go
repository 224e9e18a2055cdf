package hooks

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// The rtnetlink messages of tc that the clsact fallback needs: add the
// clsact qdisc, create or replace a cls_bpf filter, list and delete filters.
// Written here rather than taken from a netlink library: a few messages do
// not need one, and vishvananda/netlink allocates 64 KiB for every answer,
// which for a check per link added up (see ifaceByName). Every function runs in the network namespace of the
// calling thread (inNetns puts it there).

// From linux/pkt_sched.h and linux/pkt_cls.h.
const (
	tcHClsact     = 0xFFFFFFF1 // TC_H_CLSACT, the clsact qdisc's parent
	tcHMinIngress = 0xFFF2     // TC_H_MIN_INGRESS
	tcHMinEgress  = 0xFFF3     // TC_H_MIN_EGRESS
	tcHClsactMaj  = 0xFFFF0000 // the clsact qdisc's handle, ffff:

	tcaBPFFD      = 6 // TCA_BPF_FD
	tcaBPFName    = 7 // TCA_BPF_NAME
	tcaBPFFlags   = 8 // TCA_BPF_FLAGS
	tcaBPFID      = 11
	tcaBPFFlagDA  = 1 // TCA_BPF_FLAG_ACT_DIRECT: the program's return is the verdict
	sizeofTcMsg   = 20
	sizeofNlMsg   = unix.SizeofNlMsghdr
	nlAttrAlignTo = 4
)

// tcParent is the parent of filters on one direction of clsact.
func tcParent(egress bool) uint32 {
	if egress {
		return tcHClsactMaj | tcHMinEgress
	}
	return tcHClsactMaj | tcHMinIngress
}

// tcFilter is a cls_bpf filter as the kernel lists it.
type tcFilter struct {
	handle uint32
	prio   uint16
	proto  uint16 // host byte order
	progID uint32
	name   string
}

var nlSeq atomic.Uint32

// rtnl is a route netlink socket in the calling thread's network namespace.
type rtnl struct {
	fd  int
	buf []byte // for answers, kept across requests
}

func openRtnl() (*rtnl, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open rtnetlink socket: %w", err)
	}
	// Extended acks carry the kernel's reason for a refusal; older kernels
	// without them still work.
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_EXT_ACK, 1)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind rtnetlink socket: %w", err)
	}
	return &rtnl{fd: fd}, nil
}

func (r *rtnl) close() { unix.Close(r.fd) }

// tcMsg encodes struct tcmsg.
func tcMsg(ifindex int, handle, parent, info uint32) []byte {
	b := make([]byte, sizeofTcMsg)
	b[0] = unix.AF_UNSPEC
	binary.NativeEndian.PutUint32(b[4:], uint32(int32(ifindex)))
	binary.NativeEndian.PutUint32(b[8:], handle)
	binary.NativeEndian.PutUint32(b[12:], parent)
	binary.NativeEndian.PutUint32(b[16:], info)
	return b
}

func nlAlign(n int) int { return (n + nlAttrAlignTo - 1) &^ (nlAttrAlignTo - 1) }

// attr encodes one netlink attribute.
func attr(typ uint16, data []byte) []byte {
	b := make([]byte, nlAlign(unix.SizeofRtAttr+len(data)))
	binary.NativeEndian.PutUint16(b[0:], uint16(unix.SizeofRtAttr+len(data)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[unix.SizeofRtAttr:], data)
	return b
}

func attrU32(typ uint16, v uint32) []byte {
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, v)
	return attr(typ, b)
}

func attrString(typ uint16, s string) []byte { return attr(typ, append([]byte(s), 0)) }

// nlAttrs is a run of encoded netlink attributes; get finds one without
// allocating (an interface's answer has ~50, read once per check).
type nlAttrs []byte

// get returns the payload of the first attribute of type typ (nested ones
// left encoded), or nil.
func (b nlAttrs) get(typ uint16) []byte {
	for len(b) >= unix.SizeofRtAttr {
		l := int(binary.NativeEndian.Uint16(b[0:]))
		t := binary.NativeEndian.Uint16(b[2:]) &^ unix.NLA_F_NESTED
		if l < unix.SizeofRtAttr || l > len(b) {
			return nil
		}
		if t == typ {
			return b[unix.SizeofRtAttr:l]
		}
		b = b[min(nlAlign(l), len(b)):]
	}
	return nil
}

// request sends one message and reads the answers until the ack (or, for a
// dump, the end), passing each answer of type want to fn.
func (r *rtnl) request(typ, flags uint16, payload []byte, want uint16, fn func(msg []byte)) error {
	seq := nlSeq.Add(1)
	msg := make([]byte, sizeofNlMsg+len(payload))
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], typ)
	binary.NativeEndian.PutUint16(msg[6:], flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], seq)
	copy(msg[sizeofNlMsg:], payload)
	if err := unix.Sendto(r.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("send rtnetlink message: %w", err)
	}
	if r.buf == nil {
		r.buf = make([]byte, 1<<16)
	}
	buf := r.buf
	for {
		n, _, err := unix.Recvfrom(r.fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("receive rtnetlink answer: %w", err)
		}
		b := buf[:n]
		for len(b) >= sizeofNlMsg {
			l := int(binary.NativeEndian.Uint32(b[0:]))
			mtyp := binary.NativeEndian.Uint16(b[4:])
			mflags := binary.NativeEndian.Uint16(b[6:])
			mseq := binary.NativeEndian.Uint32(b[8:])
			if l < sizeofNlMsg || l > len(b) {
				return errors.New("receive rtnetlink answer: truncated message")
			}
			body := b[sizeofNlMsg:l]
			b = b[min(nlAlign(l), len(b)):]
			if mseq != seq {
				continue
			}
			switch mtyp {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				return nlError(body, mflags)
			case want:
				fn(body)
			}
		}
	}
}

// nlError turns an NLMSG_ERROR answer into nil (an ack) or an error that
// carries the kernel's extended-ack message when there is one.
func nlError(body []byte, flags uint16) error {
	if len(body) < 4 {
		return errors.New("rtnetlink: short error message")
	}
	code := int32(binary.NativeEndian.Uint32(body))
	if code == 0 {
		return nil
	}
	err := error(unix.Errno(-code))
	if flags&unix.NLM_F_ACK_TLVS != 0 {
		// The echoed request follows: its header only, when capped.
		off := 4 + sizeofNlMsg
		if flags&unix.NLM_F_CAPPED == 0 && len(body) >= 4+4 {
			off = 4 + int(binary.NativeEndian.Uint32(body[4:]))
		}
		if off <= len(body) {
			if m := nlAttrs(body[nlAlign(off):]).get(unix.NLMSGERR_ATTR_MSG); m != nil {
				return fmt.Errorf("%w (%s)", err, strings.TrimRight(string(m), "\x00"))
			}
		}
	}
	return err
}

// addClsact adds the clsact qdisc to the interface unless it has one.
func (r *rtnl) addClsact(ifindex int) error {
	payload := append(tcMsg(ifindex, tcHClsactMaj, tcHClsact, 0), attrString(unix.TCA_KIND, "clsact")...)
	err := r.request(unix.RTM_NEWQDISC, unix.NLM_F_CREATE|unix.NLM_F_EXCL, payload, 0, nil)
	if errors.Is(err, unix.EEXIST) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("add clsact qdisc: %w", err)
	}
	return nil
}

// filterID names a tc filter: its interface, parent (the clsact hook),
// priority and handle.
type filterID struct {
	ifindex int
	parent  uint32
	prio    uint16
	handle  uint32
}

func (id filterID) msg() []byte {
	return tcMsg(id.ifindex, id.handle, id.parent, uint32(id.prio)<<16|uint32(htons(unix.ETH_P_ALL)))
}

// replaceFilter creates the cls_bpf filter id, or swaps the program of the
// one there: cls_bpf replaces a filter in place under RCU, so every packet
// meets either the old program or the new one. With exclusive, an existing
// filter is an error (EEXIST) instead.
func (r *rtnl) replaceFilter(id filterID, progFD int, name string, exclusive bool) error {
	opts := append(attrU32(tcaBPFFD, uint32(progFD)), attrString(tcaBPFName, name)...)
	opts = append(opts, attrU32(tcaBPFFlags, tcaBPFFlagDA)...)
	payload := id.msg()
	payload = append(payload, attrString(unix.TCA_KIND, "bpf")...)
	payload = append(payload, attr(unix.TCA_OPTIONS|unix.NLA_F_NESTED, opts)...)
	flags := uint16(unix.NLM_F_CREATE)
	if exclusive {
		flags |= unix.NLM_F_EXCL
	}
	return r.request(unix.RTM_NEWTFILTER, flags, payload, 0, nil)
}

// deleteFilter deletes the filter id.
func (r *rtnl) deleteFilter(id filterID) error {
	payload := id.msg()
	payload = append(payload, attrString(unix.TCA_KIND, "bpf")...)
	return r.request(unix.RTM_DELTFILTER, 0, payload, 0, nil)
}

// filters lists the cls_bpf filters under parent.
func (r *rtnl) filters(ifindex int, parent uint32) ([]tcFilter, error) {
	var out []tcFilter
	err := r.request(unix.RTM_GETTFILTER, unix.NLM_F_DUMP, tcMsg(ifindex, 0, parent, 0), unix.RTM_NEWTFILTER, func(body []byte) {
		if len(body) < sizeofTcMsg {
			return
		}
		handle := binary.NativeEndian.Uint32(body[8:])
		info := binary.NativeEndian.Uint32(body[16:])
		attrs := nlAttrs(body[sizeofTcMsg:])
		if handle == 0 || strings.TrimRight(string(attrs.get(unix.TCA_KIND)), "\x00") != "bpf" {
			// Handle 0 is the entry of a priority's classifier itself.
			return
		}
		f := tcFilter{handle: handle, prio: uint16(info >> 16), proto: htons(uint16(info))}
		opts := nlAttrs(attrs.get(unix.TCA_OPTIONS))
		if id := opts.get(tcaBPFID); len(id) >= 4 {
			f.progID = binary.NativeEndian.Uint32(id)
		}
		f.name = strings.TrimRight(string(opts.get(tcaBPFName)), "\x00")
		out = append(out, f)
	})
	if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		// No clsact qdisc (EINVAL on old kernels): no filters.
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list tc filters: %w", err)
	}
	return out, nil
}

// htons swaps the bytes of v on little-endian machines: netlink wants the
// protocol in network byte order inside a host-order field.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// errIsGone reports whether err says the interface or the filter no longer
// exists.
func errIsGone(err error) bool {
	return errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT) || errors.Is(err, os.ErrNotExist)
}
