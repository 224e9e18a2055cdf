package testutil

import (
	"encoding/binary"
	"fmt"
	"testing"

	"golang.org/x/sys/unix"
)

// MustNetkitPair creates a netkit pair (Linux 6.7+, CONFIG_NETKIT) in ns,
// both ends there, in L3 mode with the forward policy, and brings both up:
// a primary device named primary and its peer named peer. It speaks
// rtnetlink itself, since iproute2 learnt netkit only in 6.7 and the
// machines' ip may be older. Deleting ns deletes the pair; Cleanup deletes
// it before.
func MustNetkitPair(tb testing.TB, ns *Netns, primary, peer string) {
	tb.Helper()
	SkipWithout(tb, Netkit)
	tb.Cleanup(func() { _ = deleteLink(ns, primary) })
	err := ns.Do(func() error { return newNetkit(primary, peer) })
	if err != nil {
		tb.Fatalf("create netkit pair %s/%s in netns %s: %v", primary, peer, ns.Name, err)
	}
	for _, name := range []string{primary, peer} {
		if _, err := ip("-n", ns.Name, "link", "set", name, "up"); err != nil {
			tb.Fatalf("netkit %s: %v", name, err)
		}
	}
}

// newNetkit sends RTM_NEWLINK for a netkit pair in the calling thread's
// network namespace and waits for the kernel's answer.
func newNetkit(primary, peer string) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	ifinfo := make([]byte, unix.SizeofIfInfomsg) // family AF_UNSPEC, everything 0
	peerInfo := append(append([]byte(nil), ifinfo...), nlattr(unix.IFLA_IFNAME, cstr(peer))...)
	data := append(nlattr(unix.IFLA_NETKIT_PEER_INFO, peerInfo), nlattr(unix.IFLA_NETKIT_MODE, u32(0))...) // NETKIT_L3
	linkinfo := append(nlattr(unix.IFLA_INFO_KIND, cstr("netkit")), nlattr(unix.IFLA_INFO_DATA, data)...)
	body := append(append(ifinfo, nlattr(unix.IFLA_IFNAME, cstr(primary))...), nlattr(unix.IFLA_LINKINFO, linkinfo)...)
	msg := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(body))
	binary.NativeEndian.PutUint32(msg[0:], uint32(unix.NLMSG_HDRLEN+len(body)))
	binary.NativeEndian.PutUint16(msg[4:], unix.RTM_NEWLINK)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE|unix.NLM_F_EXCL)
	binary.NativeEndian.PutUint32(msg[8:], 1)
	msg = append(msg, body...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return err
	}
	if n < unix.NLMSG_HDRLEN+4 || binary.NativeEndian.Uint16(buf[4:]) != unix.NLMSG_ERROR {
		return fmt.Errorf("unexpected netlink answer (%d bytes)", n)
	}
	if errno := int32(binary.NativeEndian.Uint32(buf[unix.NLMSG_HDRLEN:])); errno != 0 {
		return fmt.Errorf("RTM_NEWLINK netkit: %w", unix.Errno(-errno))
	}
	return nil
}

func nlattr(typ uint16, payload []byte) []byte {
	l := 4 + len(payload)
	b := make([]byte, (l+3)&^3)
	binary.NativeEndian.PutUint16(b[0:], uint16(l))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[4:], payload)
	return b
}

func cstr(s string) []byte { return append([]byte(s), 0) }

func u32(v uint32) []byte {
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, v)
	return b
}
