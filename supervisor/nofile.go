package supervisor

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// ensureFDRoom raises the limit on open fds (RLIMIT_NOFILE) when the fds
// the child is about to be handed, extra of them (duplicates, made before
// the fork), would not fit under it:
// bpfsup holds every map, program and link of its objects and a duplicate
// of each fd it hands over, which at a thousand objects of ten maps is
// more than 20000. The soft limit goes up to the hard one, and the hard
// one too when bpfsup may (CAP_SYS_RESOURCE), up to fs.nr_open. It fails
// naming the limit when neither is enough.
func ensureFDRoom(extra int) error {
	if extra < 256 {
		return nil // under any limit a system starts bpfsup with
	}
	// Names only: a DirEntry for each of thousands of fds costs twice the
	// time, before the child's start.
	dir, err := os.Open("/proc/self/fd")
	if err != nil {
		return nil // no /proc: leave the limit to the dup that follows
	}
	entries, err := dir.Readdirnames(-1)
	dir.Close()
	if err != nil {
		return nil
	}
	need := uint64(len(entries) + extra + 256)
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur >= need {
		return nil
	}
	want := unix.Rlimit{Cur: need, Max: max(lim.Max, need)}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &want); err == nil {
		return nil
	}
	if lim.Max >= need {
		want.Max = lim.Max
		return unix.Setrlimit(unix.RLIMIT_NOFILE, &want)
	}
	return fmt.Errorf("the objects need about %d open fds (%d open, %d to hand to the child) and RLIMIT_NOFILE allows %d (hard %d), which bpfsup may not raise: raise it (LimitNOFILE= in the unit, ulimit -n)",
		need, len(entries), extra, lim.Cur, lim.Max)
}
