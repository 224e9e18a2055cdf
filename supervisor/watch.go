package supervisor

import (
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// watchDebounce is how long the watcher waits for a burst of events (a
// deploy writing, renaming, touching) to end before it asks for one reload.
const watchDebounce = 200 * time.Millisecond

// watcher asks for a reload when a watched file changes. It watches the
// files' directories, not the files: a deploy that replaces a file by rename
// makes the old inode go away, and a watch on it would go with it. Only
// events naming a watched file count (a temporary file written beside it
// and renamed over it shows up as a create of the watched name), chmod
// alone does not, and a burst of events within watchDebounce of each other
// is one reload.
type watcher struct {
	w       *fsnotify.Watcher
	reloads chan<- reloadRequest
	log     *slog.Logger
	done    chan struct{}

	mu    sync.Mutex
	files map[string]bool // absolute paths
	dirs  map[string]bool
}

func (s *supervisor) watchedFiles() []string {
	var files []string
	for _, o := range s.opts.Objects {
		files = append(files, o.Path)
		// A signature that comes after its object reloads again.
		switch {
		case o.Signature != "":
			files = append(files, o.Signature)
		case len(o.TrustedKeys) > 0 || o.RequireSignature:
			files = append(files, o.Path+".sig")
		}
	}
	return append(files, s.opts.WatchFiles...)
}

func newWatcher(files []string, reloads chan<- reloadRequest, log *slog.Logger) (*watcher, error) {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	w := &watcher{w: fw, reloads: reloads, log: log, done: make(chan struct{}), dirs: map[string]bool{}}
	if err := w.setFiles(files); err != nil {
		fw.Close()
		return nil, err
	}
	return w, nil
}

// setFiles replaces the set of watched files, after a reload that changed
// the configuration. Directories no longer needed stay watched; their
// events are ignored.
func (w *watcher) setFiles(files []string) error {
	set := map[string]bool{}
	for _, f := range files {
		abs, err := filepath.Abs(f)
		if err != nil {
			return err
		}
		set[abs] = true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for f := range set {
		d := filepath.Dir(f)
		if w.dirs[d] {
			continue
		}
		if err := w.w.Add(d); err != nil {
			return err
		}
		w.dirs[d] = true
	}
	w.files = set
	return nil
}

func (w *watcher) watched(name string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.files[filepath.Clean(name)]
}

func (w *watcher) run() error {
	timer := stoppedTimer()
	for {
		select {
		case <-w.done:
			return nil
		case ev, ok := <-w.w.Events:
			if !ok {
				return nil
			}
			if ev.Op == fsnotify.Chmod || !w.watched(ev.Name) {
				continue
			}
			timer.Reset(watchDebounce)
		case err, ok := <-w.w.Errors:
			if !ok {
				return nil
			}
			w.log.Warn("file watch", "err", err)
		case <-timer.C:
			reply := make(chan error, 1)
			select {
			case w.reloads <- reloadRequest{reason: "file changed", reply: reply}:
				<-reply
			case <-w.done:
				return nil
			}
		}
	}
}

func (w *watcher) close() {
	select {
	case <-w.done:
	default:
		close(w.done)
	}
	w.w.Close()
}
