package pinstore

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/fastio"
)

// An object is locked twice: its lock file in the state directory, and its
// pin directory on bpffs (so that a supervisor, or `bpfsup down`, given
// another state directory cannot take pins a running one holds).
//
// The lock file takes a POSIX record lock (fcntl F_SETLK). Such a lock
// belongs to the process, not to the open file: a child never inherits it,
// not even for the instant between fork and exec, and the kernel drops it
// the moment the holder dies, however many processes still hold a copy of
// the fd. A flock would live on in the application's fork until its exec,
// and a start right after a SIGKILL of bpfsup was refused now and then,
// naming the dead pid.
//
// The pin directory takes a flock: a directory cannot be opened for writing,
// which a POSIX write lock needs. A copy of its fd in a child that has not
// exec'd yet (or one killed with bpfsup, not yet gone) holds it a moment
// longer than bpfsup lives; lockDir waits that moment out (see lockDir).
//
// POSIX locks have one trap: closing any fd of the locked file drops every
// lock the process holds on it. Nothing in a process that holds a lock file
// opens that file again: a second Open of a held object is refused before
// the file is opened (held), and LockHolder reads /proc/locks rather than
// the file, except where /proc is not there.

// held are the lock files this process holds, by device and inode.
var held struct {
	sync.Mutex
	files map[fileID]bool
}

type fileID struct{ dev, ino uint64 }

// lockFile takes an exclusive POSIX record lock on path (created if need
// be) and writes the caller's pid into it. The kernel drops the lock when
// the process dies, so a stale lock file of a crashed supervisor is simply
// taken over.
func lockFile(path string) (*os.File, error) {
	// Whether this process holds it is asked before the file is opened:
	// closing an fd of a file this process holds a POSIX lock on drops the
	// lock.
	held.Lock()
	defer held.Unlock()
	if id, ok := statID(path); ok && held.files[id] {
		// Taking it again would succeed (the lock is the process's).
		return nil, fmt.Errorf("lock %s: held by pid %d (this process): %w", path, os.Getpid(), ErrLocked)
	}
	f, err := openFile(path, unix.O_RDWR|unix.O_CREAT, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	id := fileID{st.Dev, st.Ino}
	lk := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 0}
	if err := unix.FcntlFlock(f.Fd(), unix.F_SETLK, &lk); err != nil {
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			holder := "an unknown process"
			probe := unix.Flock_t{Type: unix.F_WRLCK}
			if unix.FcntlFlock(f.Fd(), unix.F_GETLK, &probe) == nil && probe.Type != unix.F_UNLCK && probe.Pid > 0 {
				holder = "pid " + strconv.Itoa(int(probe.Pid))
			} else if pid, ok := lockFilePID(path); ok {
				// Not visible from this pid namespace: the holder wrote
				// its pid in its own.
				holder = "pid " + strconv.Itoa(pid) + " of another pid namespace (as its lock file says)"
			}
			f.Close()
			return nil, fmt.Errorf("lock %s: held by %s: %w", path, holder, ErrLocked)
		}
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if held.files == nil {
		held.files = map[fileID]bool{}
	}
	held.files[id] = true
	// The pid, for a reader in another pid namespace (lockFilePID), in a
	// line of fixed width: written over the last holder's in place, with no
	// truncation, which on a disk-backed state directory costs a journal
	// transaction (a millisecond an object).
	line := []byte(fmt.Sprintf("%-11d\n", os.Getpid()))
	if _, err := f.WriteAt(line, 0); err == nil && st.Size != int64(len(line)) {
		_ = f.Truncate(int64(len(line)))
	}
	return f, nil
}

// openFile opens path as os.OpenFile does, without offering the fd to the
// netpoller (fastio.Open): four system calls fewer for each of the two locks
// of each object a start takes.
func openFile(path string, flags int, perm uint32) (*os.File, error) {
	fd, err := fastio.Open(path, flags, perm)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}

// statID is the device and inode of the file at path.
func statID(path string) (fileID, bool) {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return fileID{}, false
	}
	return fileID{st.Dev, st.Ino}, true
}

// heldHere reports whether this process holds the lock file at path.
func heldHere(path string) bool {
	held.Lock()
	defer held.Unlock()
	id, ok := statID(path)
	return ok && held.files[id]
}

// unlockFile closes a lock file lockFile returned, dropping its lock.
func unlockFile(f *os.File) error {
	var st unix.Stat_t
	if unix.Fstat(int(f.Fd()), &st) == nil {
		held.Lock()
		delete(held.files, fileID{st.Dev, st.Ino})
		held.Unlock()
	}
	return f.Close()
}

// dirLockWait is how long lockDir waits for a pin directory's flock whose
// holder has exited: the lock then lives in a copy of the fd that a child
// took with its fork and drops at its exec, or at its death when bpfsup's
// death killed it (its parent-death signal) before the exec.
const dirLockWait = 5 * time.Second

// lockDir takes an exclusive, non-blocking flock on the directory at path:
// an object's pin directory on bpffs. When the lock is held and the
// process that took it is gone, it waits up to dirLockWait for the copy of
// the fd that still holds it to close.
func lockDir(path string) (*os.File, error) {
	f, err := openFile(path, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s to lock it: %w", path, err)
	}
	deadline := time.Now().Add(dirLockWait)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		pid, found, _ := ReadLocks().line(path)
		if found && pid == 0 {
			f.Close()
			return nil, fmt.Errorf("pins at %s are held by a process of another pid namespace (a supervisor in another container?): %w", path, ErrLocked)
		}
		if found && processRuns(pid) {
			f.Close()
			return nil, fmt.Errorf("pins at %s are held by pid %d (a supervisor with another state directory?): %w", path, pid, ErrLocked)
		}
		ok := found
		if time.Now().After(deadline) {
			f.Close()
			who := "a process that is gone"
			if ok {
				who = fmt.Sprintf("pid %d, which is gone", pid)
			}
			return nil, fmt.Errorf("pins at %s are held by %s: a process that inherited the lock's fd from it still holds it after %s%s: %w",
				path, who, dirLockWait, holdersOf(path), ErrLocked)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// holdersOf names the processes that have path open, for an error message:
// " (open in pid 12 (name))", or "".
func holdersOf(path string) string {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return ""
	}
	procs, _ := os.ReadDir("/proc")
	var found []string
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir("/proc/" + p.Name() + "/fd")
		for _, fd := range fds {
			var fst unix.Stat_t
			if unix.Stat("/proc/"+p.Name()+"/fd/"+fd.Name(), &fst) == nil && fst.Dev == st.Dev && fst.Ino == st.Ino {
				comm, _ := os.ReadFile("/proc/" + p.Name() + "/comm")
				found = append(found, fmt.Sprintf("pid %d (%s)", pid, strings.TrimSpace(string(comm))))
				break
			}
		}
	}
	if len(found) == 0 {
		return ""
	}
	return " (open in " + strings.Join(found, ", ") + ")"
}

// processRuns reports whether pid is a process that has not exited: a
// zombie has exited even though kill(pid, 0) still succeeds on it.
func processRuns(pid int) bool {
	state, ok := ProcessState(pid)
	return ok && state != 'Z' && state != 'X'
}

// ProcessState is the state letter of process pid (R, S, D, T for stopped,
// t for traced, Z for a zombie...), as /proc/PID/stat says it, and whether
// there is such a process.
func ProcessState(pid int) (byte, bool) {
	if pid <= 0 {
		return 0, false
	}
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	// The state follows the command, which is in parentheses and may hold
	// spaces and parentheses itself.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 || i+2 >= len(data) {
		return 0, false
	}
	return data[i+2], true
}

// ProcessRuns reports whether pid names a process that has not exited (a
// zombie has).
func ProcessRuns(pid int) bool { return processRuns(pid) }

// LockHolder returns the pid of the live process holding the lock at path
// (a lock file or a pin directory). It asks the kernel (/proc/locks) rather
// than taking the lock itself: a probe made a supervisor that opened the
// object at that instant fail ("held by unknown pid"), and the pid the file
// holds is missing for the moment between the holder's truncate and write.
// A flock's line names the process that took it, which may be gone while a
// copy of its fd holds the lock on.
func LockHolder(path string) (int, bool) {
	return ReadLocks().Holder(path)
}

// Locks is what /proc/locks said at one moment: the write locks, by the
// device and inode of the file locked. Reading it once for many objects
// (bpfsup status) spares a read and parse of the whole table per object.
type Locks struct {
	byFile map[lockedFile]int // pid, 0 when not visible from here
	err    error
}

type lockedFile struct {
	major, minor uint32
	ino          uint64
}

// ReadLocks reads /proc/locks.
func ReadLocks() *Locks {
	l := &Locks{byFile: map[lockedFile]int{}}
	data, err := os.ReadFile("/proc/locks")
	if err != nil {
		l.err = err
		return l
	}
	for _, line := range strings.Split(string(data), "\n") {
		// "1: POSIX  ADVISORY  WRITE 18548 fe:00:10019300 0 EOF", or FLOCK
		// (pin directories, and lock files of bpfsup before 2026-12); a
		// waiter's line has "->" after the number.
		f := strings.Fields(line)
		if len(f) < 6 || (f[1] != "FLOCK" && f[1] != "POSIX") || f[3] != "WRITE" {
			continue
		}
		var lf lockedFile
		if _, err := fmt.Sscanf(f[5], "%x:%x:%d", &lf.major, &lf.minor, &lf.ino); err != nil {
			continue
		}
		pid, _ := strconv.Atoi(f[4])
		l.byFile[lf] = max(pid, 0)
	}
	return l
}

// Holder is LockHolder as of the moment l was read.
func (l *Locks) Holder(path string) (int, bool) {
	if heldHere(path) {
		// Never opened here: that would drop the lock.
		return os.Getpid(), true
	}
	pid, found, err := l.line(path)
	switch {
	case found && pid > 0:
		return pid, true
	case found:
		// Held by a process of another pid namespace: the file says who.
		return lockFilePID(path)
	case err != nil:
		return lockHolderByProbe(path)
	}
	return 0, false
}

// line finds the write lock on path, and the pid it names: 0 when the
// holder is not visible from this pid namespace. err says that /proc/locks
// could not be read.
func (l *Locks) line(path string) (pid int, found bool, err error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, false, nil
	}
	if l.err != nil {
		return 0, false, l.err
	}
	pid, found = l.byFile[lockedFile{unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino}]
	return pid, found, nil
}

// lockHolderByProbe is LockHolder where /proc is not there: F_GETLK names
// the holder of a POSIX lock.
func lockHolderByProbe(path string) (int, bool) {
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	probe := unix.Flock_t{Type: unix.F_RDLCK}
	if err := unix.FcntlFlock(f.Fd(), unix.F_GETLK, &probe); err != nil || probe.Type == unix.F_UNLCK {
		return 0, false
	}
	if probe.Pid > 0 {
		return int(probe.Pid), true
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
