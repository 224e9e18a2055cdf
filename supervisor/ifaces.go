package supervisor

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/converge"
	"github.com/bpfsup/bpfsup/hooks"
)

// An XDP or tcx link whose interface is deleted stays alive but defunct. When
// an interface of the hook's name appears again, the link is attached anew.
// bpfsup learns of new interfaces from rtnetlink (RTM_NEWLINK), one socket per
// network namespace of the configured hooks, created inside that namespace;
// the socket keeps the namespace alive. The watcher only reports; the
// supervisor's loop, which owns the state, re-attaches.

// ifaceEvent says that interfaces changed in a network namespace.
type ifaceEvent struct {
	// netns is the namespace's path, "" for bpfsup's own.
	netns string
	// name is the interface; "" when events were lost and every link of the
	// namespace must be checked.
	name string
	// deleted is true for RTM_DELLINK.
	deleted bool
	// started is the first look once the namespace is watched: only the
	// links install kept defunct can need re-attaching, since install just
	// checked the others.
	started bool
}

// ifaceWatcher holds one rtnetlink socket per watched network namespace.
type ifaceWatcher struct {
	events chan ifaceEvent
	done   chan struct{}
	log    *slog.Logger

	mu    sync.Mutex
	socks map[string]*os.File
	// inodes are the namespaces watched, by path: a path may come to name
	// another namespace (deleted and made again), see moved.
	inodes map[string]uint64
	closed bool
	wg     sync.WaitGroup
}

func newIfaceWatcher(log *slog.Logger) *ifaceWatcher {
	return &ifaceWatcher{events: make(chan ifaceEvent, 64), done: make(chan struct{}), log: log, socks: map[string]*os.File{}, inodes: map[string]uint64{}}
}

// watch starts watching the namespace at path; watching it twice is one watch.
func (w *ifaceWatcher) watch(path string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return errors.New("link watcher closed")
	}
	if _, ok := w.socks[path]; ok {
		return nil
	}
	if _, ok := w.inodes[path]; ok {
		return nil // gone: rewatch takes it up again when it is back
	}
	return w.subscribe(path)
}

// subscribe opens the watch of the namespace at path; w.mu is held.
func (w *ifaceWatcher) subscribe(path string) error {
	before, _ := hooks.NetnsInode(path)
	f, err := subscribeLinks(path)
	if err != nil {
		return err
	}
	if after, _ := hooks.NetnsInode(path); after != before {
		// The path changed while the socket was made: which namespace it
		// is in is not known. Unknown inode: the next look sees it moved.
		before = 0
	}
	w.socks[path], w.inodes[path] = f, before
	w.wg.Add(1)
	go w.read(path, f)
	return nil
}

// moved lists the watched paths that no longer name the namespace watched
// there: deleted, or deleted and made again.
func (w *ifaceWatcher) moved() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var paths []string
	for path, ino := range w.inodes {
		if path == "" {
			continue // bpfsup's own namespace
		}
		now, err := hooks.NetnsInode(path)
		if err != nil {
			now = 0 // gone (and 0 is recorded for a namespace gone)
		}
		if now != ino {
			paths = append(paths, path)
		}
	}
	return paths
}

// rewatch closes the watch of path, which lets the old namespace go when
// nothing else holds it, and watches the namespace now at path, if any (an
// error wrapping hooks.ErrTargetNotFound when there is none).
func (w *ifaceWatcher) rewatch(path string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return errors.New("link watcher closed")
	}
	if f, ok := w.socks[path]; ok {
		f.Close() // its reader ends
		delete(w.socks, path)
	}
	if _, err := hooks.NetnsInode(path); err != nil {
		w.inodes[path] = 0 // gone: watched again once it is back
		return err
	}
	return w.subscribe(path)
}

// run blocks until close, as an actor of the supervisor's run group.
func (w *ifaceWatcher) run() error {
	<-w.done
	return nil
}

// close stops every watch and waits for the readers to end. Idempotent.
func (w *ifaceWatcher) close() {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.closed = true
	close(w.done)
	for _, f := range w.socks {
		f.Close()
	}
	w.mu.Unlock()
	w.wg.Wait()
}

func (w *ifaceWatcher) read(path string, f *os.File) {
	defer w.wg.Done()
	buf := make([]byte, 64<<10)
	for {
		n, err := f.Read(buf)
		switch {
		case errors.Is(err, os.ErrClosed):
			return
		case errors.Is(err, unix.ENOBUFS):
			// The socket overflowed: events were lost, check everything.
			w.send(ifaceEvent{netns: path})
			continue
		case err != nil:
			w.log.Error("rtnetlink watch ended; defunct links will not be re-attached", "netns", path, "err", err)
			return
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			w.send(ifaceEvent{netns: path})
			continue
		}
		for i := range msgs {
			m := &msgs[i]
			if m.Header.Type != unix.RTM_NEWLINK && m.Header.Type != unix.RTM_DELLINK {
				continue
			}
			if ev, ok := parseIfaceMessage(path, m); ok {
				w.send(ev)
			}
		}
	}
}

func (w *ifaceWatcher) send(ev ifaceEvent) {
	select {
	case w.events <- ev:
	case <-w.done:
	}
}

// parseIfaceMessage reads the interface name of an RTM_NEWLINK or RTM_DELLINK.
func parseIfaceMessage(path string, m *syscall.NetlinkMessage) (ifaceEvent, bool) {
	attrs, err := syscall.ParseNetlinkRouteAttr(m)
	if err != nil {
		return ifaceEvent{}, false
	}
	for _, a := range attrs {
		if a.Attr.Type == unix.IFLA_IFNAME {
			name := strings.TrimRight(string(a.Value), "\x00")
			return ifaceEvent{netns: path, name: name, deleted: m.Header.Type == unix.RTM_DELLINK}, true
		}
	}
	return ifaceEvent{}, false
}

// subscribeLinks opens an rtnetlink socket in the namespace at path (bpfsup's
// own when empty), subscribed to link events. The socket is non-blocking so
// that reads wait in the runtime's poller and close interrupts them.
func subscribeLinks(path string) (*os.File, error) {
	var fd int
	err := hooks.InNetns(path, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("rtnetlink socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_LINK}); err != nil {
			unix.Close(fd)
			return fmt.Errorf("subscribe to rtnetlink link events: %w", err)
		}
		return nil
	})
	if err != nil {
		where := "this network namespace"
		if path != "" {
			where = "network namespace " + path
		}
		return nil, fmt.Errorf("watch interfaces of %s: %w", where, err)
	}
	return os.NewFile(uintptr(fd), "rtnetlink:"+path), nil
}

// ifaceEvents is the channel of interface events, nil when nothing watches.
func (s *supervisor) ifaceEvents() <-chan ifaceEvent {
	if s.ifaces == nil {
		return nil
	}
	return s.ifaces.events
}

// watchInterfaces watches the network namespace of every network hook, and
// re-attaches defunct links whose interface came back before the watch
// began. Called by the loop's goroutine, at start and after a reload.
func (s *supervisor) watchInterfaces() error {
	paths := map[string]bool{}
	for _, in := range s.objects {
		for _, spec := range in.Hooks() {
			if spec.IsNetwork() {
				paths[spec.Netns] = true
			}
		}
	}
	if len(paths) == 0 {
		return nil
	}
	if s.ifaces == nil {
		s.ifaces = newIfaceWatcher(s.log)
	}
	for path := range paths {
		if err := s.ifaces.watch(path); err != nil {
			return err
		}
		s.reattachIface(ifaceEvent{netns: path, started: true})
	}
	return nil
}

// reattachIface re-attaches the links of network hooks in ev's namespace (and on
// ev's interface, when it names one) that are not attached to their
// interface while it exists: defunct links, and links missing because their
// interface was gone at start. It runs in the loop's goroutine.
func (s *supervisor) reattachIface(ev ifaceEvent) {
	match := func(spec hooks.Spec) bool {
		return spec.IsNetwork() && spec.Netns == ev.netns && (ev.name == "" || spec.Target == ev.name)
	}
	if ev.deleted {
		s.logDefunct(match, "interface deleted; its link is defunct until an interface of that name is back")
		return
	}
	s.reattach(match, ev.started)
}

// logDefunct says, for each link of a hook match picks, that it is defunct
// and why.
func (s *supervisor) logDefunct(match func(hooks.Spec) bool, why string) {
	for _, in := range s.objects {
		in.LogDefunct(match, why, s.log)
	}
}

// reattach re-attaches the links of the hooks match picks that are not
// attached while their target exists; with onlyDefunct (the first look
// after install, which just checked the others) only those install kept
// defunct. It runs in the loop's goroutine.
func (s *supervisor) reattach(match func(hooks.Spec) bool, onlyDefunct bool) {
	changed := false
	for _, in := range s.objects {
		changed = in.Reattach(match, onlyDefunct, s.log) || changed
	}
	if changed {
		converge.CheckOrder(s.objects, s.opts.EnforceOrder, s.log)
	}
}
