package supervisor

import (
	"log/slog"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// watchDebounce is how long the watcher waits for a burst of events (a
// deploy writing, renaming, touching) to end before it asks for one reload.
const watchDebounce = 200 * time.Millisecond

// watcher asks for a reload when a watched file changes. It watches the
// files' directories, not the files: a deploy that replaces a file by rename
// makes the old inode go away, and a watch on it would go with it.
type watcher struct {
	w       *fsnotify.Watcher
	files   map[string]bool
	reloads chan<- reloadRequest
	log     *slog.Logger
	done    chan struct{}
}

func (s *supervisor) watchedFiles() []string {
	var files []string
	for _, o := range s.opts.Objects {
		files = append(files, o.Path)
	}
	return append(files, s.opts.WatchFiles...)
}

func newWatcher(files []string, reloads chan<- reloadRequest, log *slog.Logger) (*watcher, error) {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, err
	}
	w := &watcher{w: fw, files: map[string]bool{}, reloads: reloads, log: log, done: make(chan struct{})}
	dirs := map[string]bool{}
	for _, f := range files {
		abs, err := filepath.Abs(f)
		if err != nil {
			fw.Close()
			return nil, err
		}
		w.files[abs] = true
		dirs[filepath.Dir(abs)] = true
	}
	for d := range dirs {
		if err := fw.Add(d); err != nil {
			fw.Close()
			return nil, err
		}
	}
	return w, nil
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
			if !w.files[filepath.Clean(ev.Name)] || ev.Op == fsnotify.Chmod {
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
