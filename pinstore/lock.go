package pinstore

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// lockFile takes an exclusive, non-blocking flock on path and writes the
// caller's pid into it. The kernel drops the lock when the process dies, so a
// stale lock file of a crashed supervisor is simply taken over.
func lockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := flock(f, path, "lock %s: held by %s"); err != nil {
		return nil, err
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// lockDir takes an exclusive, non-blocking flock on the directory at path:
// an object's pin directory on bpffs, locked beside its lock file in the
// state directory, so that a supervisor (or `bpfsup down`) given another
// state directory cannot take pins a running one holds.
func lockDir(path string) (*os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open %s to lock it: %w", path, err)
	}
	if err := flock(f, path, "pins at %s are held by %s (a supervisor with another state directory?)"); err != nil {
		return nil, err
	}
	return f, nil
}

// flock takes an exclusive, non-blocking flock on f, opened from path, or
// closes it and says who holds it (held formats path and the holder).
func flock(f *os.File, path, held string) error {
	err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if err == nil {
		return nil
	}
	f.Close()
	if errors.Is(err, unix.EWOULDBLOCK) {
		holder := "an unknown process"
		if pid, ok := LockHolder(path); ok {
			holder = "pid " + strconv.Itoa(pid)
		}
		return fmt.Errorf(held+": %w", path, holder, ErrLocked)
	}
	return fmt.Errorf("lock %s: %w", path, err)
}

// LockHolder returns the pid of the live process holding the lock at path.
// It asks the kernel (/proc/locks) rather than taking the lock itself: a
// probe with a shared lock made a supervisor that opened the object at that
// instant fail ("held by unknown pid"), and the pid the file holds is
// missing for the moment between the holder's truncate and write.
func LockHolder(path string) (int, bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, false
	}
	data, err := os.ReadFile("/proc/locks")
	if err != nil {
		return lockHolderByProbe(path)
	}
	for _, line := range strings.Split(string(data), "\n") {
		// "1: FLOCK  ADVISORY  WRITE 18548 fe:00:10019300 0 EOF"; a
		// waiter's line has "->" after the number.
		f := strings.Fields(line)
		if len(f) < 6 || f[1] != "FLOCK" || f[3] != "WRITE" {
			continue
		}
		var major, minor uint32
		var ino uint64
		if _, err := fmt.Sscanf(f[5], "%x:%x:%d", &major, &minor, &ino); err != nil {
			continue
		}
		if ino != st.Ino || major != unix.Major(st.Dev) || minor != unix.Minor(st.Dev) {
			continue
		}
		if pid, err := strconv.Atoi(f[4]); err == nil && pid > 0 {
			return pid, true
		}
		// Held by a process of another pid namespace: the file says who.
		return lockFilePID(path)
	}
	return 0, false
}

// lockHolderByProbe is LockHolder where /proc is not there: a shared lock
// that can be taken means nobody holds the lock.
func lockHolderByProbe(path string) (int, bool) {
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err == nil {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		return 0, false
	}
	return lockFilePID(path)
}

// lockFilePID is the pid the lock file at path holds.
func lockFilePID(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, false
	}
	return pid, true
}
