package supervisor

import (
	"net"
	"strconv"
	"testing"
)

// TestInheritedMetricsListener: the metrics socket handed across a re-exec
// is taken only when it is on the address asked for, host and port.
func TestInheritedMetricsListener(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	for _, tc := range []struct {
		addr string
		keep bool
	}{
		{"127.0.0.1:" + port, true},
		{"localhost:" + port, true},
		{"127.0.0.1:0", true},
		{"0.0.0.0:" + port, false},
		{":" + port, false},
		{"[::1]:" + port, false},
		{"127.0.0.2:" + port, false},
		{"127.0.0.1:1", false},
	} {
		f, err := l.(*net.TCPListener).File()
		if err != nil {
			t.Fatal(err)
		}
		got := inheritedTCP(tc.addr, f)
		if (got != nil) != tc.keep {
			t.Errorf("listener on %s, asked for %s: kept %v, want %v", l.Addr(), tc.addr, got != nil, tc.keep)
		}
		if got != nil {
			got.Close()
		}
	}

	// On every address: Go makes a dual-stack socket on [::] for "0.0.0.0"
	// as for "".
	all, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer all.Close()
	port = strconv.Itoa(all.Addr().(*net.TCPAddr).Port)
	for _, addr := range []string{"0.0.0.0:" + port, ":" + port, "[::]:" + port} {
		f, err := all.(*net.TCPListener).File()
		if err != nil {
			t.Fatal(err)
		}
		got := inheritedTCP(addr, f)
		if got == nil {
			t.Errorf("listener on %s, asked for %s: not kept", all.Addr(), addr)
			continue
		}
		got.Close()
	}
}
