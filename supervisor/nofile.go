package supervisor

import (
	"fmt"
	"os"
	"strconv"

	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/fastio"
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
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return nil
	}
	// The size of the fd table bounds the number of open fds from above:
	// when even that leaves room, they need not be counted (a listing of
	// thousands of fds, a millisecond before the child's start).
	if size, ok := fdTableSize(); ok && lim.Cur >= uint64(size+extra+256) {
		return nil
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
	if lim.Cur >= need {
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

// fdTableSize is the size of this process's fd table (FDSize in
// /proc/self/status): every open fd is below it.
func fdTableSize() (int, bool) {
	v, ok := fastio.StatusField("self", "FDSize")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	return n, err == nil && n > 0
}
