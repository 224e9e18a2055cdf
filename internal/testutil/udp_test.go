package testutil

import (
	"net/netip"
	"testing"
	"time"
)

func TestDatagram(t *testing.T) {
	for _, seq := range []uint64{1, 2, 1 << 40, ^uint64(0)} {
		b := encodeDatagram(nil, seq)
		if len(b) != DatagramSize {
			t.Fatalf("datagram %d is %d bytes, want %d", seq, len(b), DatagramSize)
		}
		if got, ok := decodeDatagram(b); !ok || got != seq {
			t.Fatalf("decode(encode(%d)) = %d, %v", seq, got, ok)
		}
	}
	for _, b := range [][]byte{nil, []byte("bpfsup01"), []byte("xpfsup01\x00\x00\x00\x00\x00\x00\x00\x01"), append(encodeDatagram(nil, 1), 0)} {
		if _, ok := decodeDatagram(b); ok {
			t.Errorf("decoded %q", b)
		}
	}
}

func TestUDPTraffic(t *testing.T) {
	RequireRoot(t)
	a, b := MustNetns(t, "udpa"), MustNetns(t, "udpb")
	_, ifB := MustVethPair(t, a, b)

	recv := StartUDPReceiver(t, b, 0)
	if recv.Port() == 0 {
		t.Fatal("receiver has no port")
	}
	send := StartUDPSender(t, a, netip.AddrPortFrom(ifB.Addr, uint16(recv.Port())), 2000)
	recv.WaitCount(t, 200, 10*time.Second)
	send.Stop()
	send.Stop()

	sent := send.Sent()
	if send.Errors() != 0 {
		t.Fatalf("%d send errors", send.Errors())
	}
	// Nothing is lost between two namespaces on one machine at this rate.
	WaitFor(t, 5*time.Second, "every datagram sent to arrive", func() bool { return recv.Count() == sent })
	if recv.LastSeq() != sent {
		t.Fatalf("last sequence number %d, want %d", recv.LastSeq(), sent)
	}
	if sent != send.Sent() {
		t.Fatalf("sender sent %d after Stop, %d before", send.Sent(), sent)
	}

	if err := recv.Stop(); err != nil {
		t.Fatal(err)
	}
	count := recv.Count()
	if err := recv.Stop(); err != nil {
		t.Fatal(err)
	}
	if recv.Count() != count {
		t.Fatal("count changed after Stop")
	}
}

// The sender keeps its rate: never ahead of it, and not far behind.
func TestUDPSenderRate(t *testing.T) {
	RequireRoot(t)
	ns := MustNetns(t, "rate")
	recv := StartUDPReceiver(t, ns, 0)
	const rate = 200
	start := time.Now()
	send := StartUDPSender(t, ns, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(recv.Port())), rate)
	recv.WaitCount(t, 50, 10*time.Second)

	sent := send.Sent()
	elapsed := time.Since(start)
	if limit := uint64(elapsed.Seconds()*rate) + 1; sent > limit {
		t.Fatalf("sent %d datagrams in %v, more than %d at %d/s", sent, elapsed, limit, rate)
	}
	if elapsed < 200*time.Millisecond {
		t.Fatalf("50 datagrams arrived after %v, faster than %d/s", elapsed, rate)
	}
}

// A sender may start before anyone listens: the datagrams are lost, the
// sender does not stop.
func TestUDPSenderBeforeReceiver(t *testing.T) {
	RequireRoot(t)
	ns := MustNetns(t, "early")
	// Reserve a port, then free it for the receiver to take.
	probe := StartUDPReceiver(t, ns, 0)
	port := probe.Port()
	if err := probe.Stop(); err != nil {
		t.Fatal(err)
	}
	send := StartUDPSender(t, ns, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(port)), 1000)
	WaitFor(t, 5*time.Second, "datagrams into the void", func() bool { return send.Sent() >= 10 })

	recv := StartUDPReceiver(t, ns, port)
	recv.WaitCount(t, 10, 10*time.Second)
	if recv.LastSeq() < 10 {
		t.Fatalf("receiver's first datagrams have sequence numbers up to %d, want the later ones", recv.LastSeq())
	}
}
