package supervisor

import (
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestEnsureFDRoom: the soft limit is raised to fit the fds to hand over,
// and when the hard one is too low and bpfsup may not raise it the error
// names the limit. It runs in a child process: a lowered hard limit cannot
// be raised again without CAP_SYS_RESOURCE.
func TestEnsureFDRoom(t *testing.T) {
	if os.Getenv("BPFSUP_TEST_NOFILE") == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestEnsureFDRoom$", "-test.v")
		cmd.Env = append(os.Environ(), "BPFSUP_TEST_NOFILE=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--- PASS") {
			t.Fatalf("in a child: %v\n%s", err, out)
		}
		return
	}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: 512, Max: 4096}); err != nil {
		t.Fatal(err)
	}
	if err := ensureFDRoom(1000); err != nil {
		t.Fatalf("1000 fds under a hard limit of 4096: %v", err)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur < 1000 || lim.Max != 4096 {
		t.Fatalf("limit %+v after making room for 1000 fds, want soft >= 1000 and hard 4096", lim)
	}
	err := ensureFDRoom(10000)
	if os.Geteuid() == 0 && err == nil {
		if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) != nil || lim.Cur < 10000 {
			t.Fatalf("limit %+v after making room for 10000 fds with CAP_SYS_RESOURCE", lim)
		}
		return // bpfsup may raise the hard limit here
	}
	if err == nil || !strings.Contains(err.Error(), "RLIMIT_NOFILE allows") || !strings.Contains(err.Error(), "LimitNOFILE=") {
		t.Fatalf("10000 fds under a hard limit of 4096: %v, want an error naming the limit", err)
	}
}

// TestFDTableSize: the size ensureFDRoom bounds the open fds with is above
// every open fd, also after the table grew for hundreds more.
func TestFDTableSize(t *testing.T) {
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for range 300 {
		fd, err := unix.Dup(0)
		if err != nil {
			t.Fatal(err)
		}
		fds = append(fds, fd)
	}
	size, ok := fdTableSize()
	if !ok {
		t.Fatal("no FDSize in /proc/self/status")
	}
	for _, fd := range fds {
		if fd >= size {
			t.Fatalf("fd %d is open and the table size read is %d", fd, size)
		}
	}
}
