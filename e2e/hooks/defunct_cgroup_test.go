package hookstest

import (
	"os"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// TestCgroupGoneIsDefunct: a cgroup link whose cgroup was removed is left
// on no cgroup by the kernel; status says defunct, not attached. When the
// cgroup is made again (as systemd does when a service restarts), bpfsup
// attaches the program to it again.
func TestCgroupGoneIsDefunct(t *testing.T) {
	env := testutil.MustEnv(t)
	cg := mustCgroup(t)
	p := env.Start(t, "run", "-o", testutil.BPFObject("connect4_block"), "-a", "block_connect4@cgroup/connect4:"+cg, "--", "sleep", "1000")
	p.WaitOutput(t, `msg="child started"`, 20*time.Second)
	if st := e2e.LinkStatus(t, env, "connect4_block", "block_connect4").State; st != "attached" {
		t.Fatalf("link on %s: state %q, want attached", cg, st)
	}
	if err := unix.Rmdir(cg); err != nil {
		t.Fatal(err)
	}
	// The kernel lets go of the cgroup a moment after the rmdir.
	testutil.WaitFor(t, 10*time.Second, "status to say the link is defunct", func() bool {
		return e2e.LinkStatus(t, env, "connect4_block", "block_connect4").State == "defunct"
	})

	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	prog := e2e.PinnedProgramID(t, e2e.PinPath(env, "connect4_block", "programs", "block_connect4"))
	testutil.WaitFor(t, 10*time.Second, "bpfsup to attach the program to the new cgroup", func() bool {
		return cgroupRuns(cg, ebpf.AttachCGroupInet4Connect, prog) &&
			e2e.LinkStatus(t, env, "connect4_block", "block_connect4").State == "attached"
	})
	p.WaitOutput(t, `msg="re-attached link" object=connect4_block link=block_connect4`, 5*time.Second)
}

// cgroupRuns reports whether the kernel runs program prog on the cgroup at
// path for attach (BPF_PROG_QUERY, which every kernel bpfsup runs on
// answers; bpftool 7.1's cgroup show fails on 5.10).
func cgroupRuns(path string, attach ebpf.AttachType, prog ebpf.ProgramID) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	res, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: attach})
	if err != nil {
		return false
	}
	for _, p := range res.Programs {
		if p.ID == prog {
			return true
		}
	}
	return false
}
