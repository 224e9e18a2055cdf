package supervision

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// The real systemd-socket-activate starts bpfsup with a listening socket
// named "web": the child gets it first (fd 3, with its name), then the BPF
// fds, and answers on it while using its map.
func TestSocketActivation(t *testing.T) {
	activate, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skipf("systemd-socket-activate is not installed: %v", err)
	}
	e := testutil.MustEnv(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	// systemd-socket-activate passes on only TERM, PATH, USER, HOME and
	// what -E names.
	args := append([]string{"-l", addr, "--fdname=web", "-E", envChild + "=serve", e.Bin},
		e.Args("run", "-o", counterObj, "--", self(t))...)
	p := testutil.StartProc(t, exec.Command(activate, args...))

	var conn net.Conn
	testutil.WaitFor(t, 10*time.Second, "systemd-socket-activate to listen on "+addr, func() bool {
		conn, err = net.Dial("tcp", addr)
		return err == nil
	})
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		t.Fatalf("read the child's answer: %v; output:\n%s", err, p.Output())
	}
	t.Logf("child answered: %s", strings.TrimSpace(reply))
	if !strings.HasPrefix(reply, "names=web,counter/maps/counters ") {
		t.Errorf("the child was handed %q, want the socket \"web\" first, then counter/maps/counters", reply)
	}
	if !strings.Contains(reply, "map=ok") {
		t.Errorf("the child could not use its map: %q", reply)
	}

	// The child wrote through the very map that is pinned.
	m, err := ebpf.LoadPinnedMap(filepath.Join(e.PinRoot, "counter", "maps", "counters"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var v uint64
	if err := m.Lookup(uint32(1), &v); err != nil || v != 1234 {
		t.Errorf("counters[1] = %d (%v), want 1234 written by the child", v, err)
	}
}
