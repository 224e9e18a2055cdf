package supervisor

import (
	"log/slog"
	"path/filepath"
	"sync"

	"github.com/fsnotify/fsnotify"

	"github.com/bpfsup/bpfsup/hooks"
)

// A cgroup link whose cgroup is removed stays alive but defunct, on no
// cgroup. systemd removes a service's cgroup when the service stops and
// makes it again when it starts: a policy on that cgroup must follow. When
// a cgroup of the hook's path is made again, the link is attached anew, as
// an XDP link is when its interface is back (netlink.go). bpfsup learns of
// it from inotify on the cgroup's parent directory; the watcher only
// reports, the supervisor's loop re-attaches.

// cgroupEvent says that the cgroup at path was made or removed.
type cgroupEvent struct {
	path    string
	deleted bool
}

// cgroupWatcher watches the parent directories of the cgroup hooks.
type cgroupWatcher struct {
	w      *fsnotify.Watcher
	events chan cgroupEvent
	log    *slog.Logger
	quit   chan struct{} // closed by close: stop sending
	done   chan struct{} // closed when read returns

	mu      sync.Mutex
	targets map[string]bool
	dirs    map[string]bool
}

func newCgroupWatcher(log *slog.Logger) (*cgroupWatcher, error) {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	w := &cgroupWatcher{w: fw, events: make(chan cgroupEvent, 64), log: log, quit: make(chan struct{}), done: make(chan struct{}),
		targets: map[string]bool{}, dirs: map[string]bool{}}
	go w.read()
	return w, nil
}

// watch adds the cgroup at path; watching it twice is one watch.
func (w *cgroupWatcher) watch(path string) error {
	path = filepath.Clean(path)
	dir := filepath.Dir(path)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.targets[path] = true
	if w.dirs[dir] {
		return nil
	}
	if err := w.w.Add(dir); err != nil {
		return err
	}
	w.dirs[dir] = true
	return nil
}

func (w *cgroupWatcher) read() {
	defer close(w.done)
	for {
		select {
		case ev, ok := <-w.w.Events:
			if !ok {
				return
			}
			w.mu.Lock()
			ours := w.targets[filepath.Clean(ev.Name)]
			w.mu.Unlock()
			if !ours || !ev.Has(fsnotify.Create|fsnotify.Remove) {
				continue
			}
			if !w.send(cgroupEvent{path: filepath.Clean(ev.Name), deleted: ev.Has(fsnotify.Remove)}) {
				return
			}
		case err, ok := <-w.w.Errors:
			if !ok {
				return
			}
			// An overflow loses events: look at every cgroup hook.
			w.log.Warn("cgroup watch", "err", err)
			if !w.send(cgroupEvent{}) {
				return
			}
		}
	}
}

// send passes ev to the loop, unless the watcher is closing.
func (w *cgroupWatcher) send(ev cgroupEvent) bool {
	select {
	case w.events <- ev:
		return true
	case <-w.quit:
		return false
	}
}

func (w *cgroupWatcher) close() {
	close(w.quit)
	w.w.Close()
	<-w.done
}

// cgroupEvents is the channel of cgroup events, nil when nothing watches.
func (s *supervisor) cgroupEvents() <-chan cgroupEvent {
	if s.cgroups == nil {
		return nil
	}
	return s.cgroups.events
}

// isCgroupHook says whether spec attaches to a cgroup directory.
func isCgroupHook(spec hooks.Spec) bool { return spec.Kind == "cgroup" }

// watchCgroups watches the cgroup of every cgroup hook, and re-attaches
// defunct links whose cgroup came back before the watch began. Called by
// the loop's goroutine, at start and after a reload.
func (s *supervisor) watchCgroups() error {
	var paths []string
	for _, in := range s.objects {
		for _, spec := range in.Hooks() {
			if isCgroupHook(spec) {
				paths = append(paths, spec.Target)
			}
		}
	}
	if len(paths) == 0 {
		return nil
	}
	if s.cgroups == nil {
		w, err := newCgroupWatcher(s.log)
		if err != nil {
			return err
		}
		s.cgroups = w
	}
	for _, p := range paths {
		if err := s.cgroups.watch(p); err != nil {
			return err
		}
	}
	s.recgroup(cgroupEvent{})
	return nil
}

// recgroup re-attaches the links of cgroup hooks on ev's cgroup (every
// cgroup hook when ev names none) that are not attached while it exists.
func (s *supervisor) recgroup(ev cgroupEvent) {
	match := func(spec hooks.Spec) bool {
		return isCgroupHook(spec) && (ev.path == "" || filepath.Clean(spec.Target) == ev.path)
	}
	if ev.deleted {
		s.logDefunct(match, "cgroup removed; its link is defunct until a cgroup of that path is back")
		return
	}
	s.reattach(match, ev.path == "")
}
