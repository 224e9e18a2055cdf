package supervisor

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/hooks"
)

// Two things bpfsup depends on are mounts: a network namespace named by a
// path is a bind mount of it there (ip netns add), and the pin root is on a
// bpffs mount. When the mount table changes, the loop checks both: a
// namespace deleted and made again at its path (another inode) gets its
// links attached anew in it, and a pin directory that is no longer the one
// bpfsup locked (bpffs unmounted, or mounted again empty) is reported and
// never written to; once bpffs is back, everything is pinned again from the
// fds bpfsup holds.
//
// poll(2) on /proc/self/mountinfo says POLLPRI when the mount table of the
// process's mount namespace changed (proc(5)). Every poll of the file, by
// anyone, consumes the change: the file is opened with open(2), not os.Open,
// so that Go's network poller never registers it in its epoll set, which
// would take the change before this poll sees it.

// mountWatcher reports changes of the mount table on events, coalesced.
type mountWatcher struct {
	events chan struct{}
	fd     int
	wake   [2]int // a pipe: close interrupts the poll
	once   sync.Once
	done   chan struct{}
}

func newMountWatcher() (*mountWatcher, error) {
	fd, err := unix.Open("/proc/self/mountinfo", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("watch mounts: open /proc/self/mountinfo: %w", err)
	}
	w := &mountWatcher{events: make(chan struct{}, 1), fd: fd, done: make(chan struct{})}
	if err := unix.Pipe2(w.wake[:], unix.O_CLOEXEC); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watch mounts: %w", err)
	}
	return w, nil
}

// run polls until close, as an actor of the supervisor's run group.
func (w *mountWatcher) run() error {
	defer close(w.done)
	fds := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLPRI}, {Fd: int32(w.wake[0]), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("watch mounts: %w", err)
		}
		if fds[1].Revents != 0 {
			return nil
		}
		if fds[0].Revents&(unix.POLLPRI|unix.POLLERR) != 0 {
			select {
			case w.events <- struct{}{}:
			default: // one pending event says it all
			}
		}
	}
}

// close stops run and waits for it. Idempotent.
func (w *mountWatcher) close() {
	w.once.Do(func() {
		unix.Close(w.wake[1])
		<-w.done
		unix.Close(w.wake[0])
		unix.Close(w.fd)
	})
}

// mountEvents is the channel of mount table changes, nil when nothing
// watches.
func (s *supervisor) mountEvents() <-chan struct{} {
	if s.mounts == nil {
		return nil
	}
	return s.mounts.events
}

// checkMounts looks again at what the mount table decides: the network
// namespaces of the hooks, and the pin directories. It runs in the loop's
// goroutine.
func (s *supervisor) checkMounts() {
	if s.links != nil {
		for _, path := range s.links.moved() {
			s.netnsMoved(path)
		}
	}
	for _, in := range s.objects {
		in.CheckPins(s.log)
	}
}

// netnsMoved handles a network namespace path that names another namespace
// than the one watched, or none: the old namespace is let go (bpfsup's
// watch was what kept it alive), and the links of its hooks are attached
// anew in the new one, make-before-break, as for an interface made again.
func (s *supervisor) netnsMoved(path string) {
	err := s.links.rewatch(path)
	if errors.Is(err, hooks.ErrTargetNotFound) || errors.Is(err, os.ErrNotExist) {
		s.logDefunct(func(spec hooks.Spec) bool { return spec.IsNetwork() && spec.Netns == path },
			"network namespace is gone; its link is defunct until a namespace is made at its path again")
		return
	}
	if err != nil {
		s.log.Error("cannot watch the network namespace made again at its path", "netns", path, "err", err)
	}
	s.log.Info("network namespace made again at its path: attaching its links in the new one", "netns", path)
	s.reattach(func(spec hooks.Spec) bool { return spec.IsNetwork() && spec.Netns == path }, false)
}
