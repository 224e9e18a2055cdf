// Package fdstore keeps bpfsup's BPF objects in systemd's file descriptor
// store, a second home beside their pins: systemd holds the fds across
// restarts of the service and hands them back at the next start, so a link
// stays attached even where its pin was removed, or where nothing was
// pinned at all (pins = false).
//
// The protocol is sd_pid_notify_with_fds(3)'s: a datagram to NOTIFY_SOCKET
// with "FDSTORE=1", "FDNAME=" and the fd in SCM_RIGHTS stores it;
// "FDSTOREREMOVE=1" with "FDNAME=" drops every fd of that name. Every fd is
// stored with "FDPOLL=0": systemd otherwise polls stored fds and drops one
// that reports an error, which a map's fd does. An fd is named by its path
// under the pin root ("fw/links/xdp_fw"), so the next start knows where it
// belongs. The unit needs FileDescriptorStoreMax= of at least the number of
// fds (systemd 254 and later say it in $FDSTORE; Max).
//
// At the next start systemd passes the fds back as socket activation does,
// in LISTEN_FDS and LISTEN_FDNAMES; Split tells them from the sockets meant
// for the application.
package fdstore

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/handoff"
	"github.com/bpfsup/bpfsup/internal/bpffs"
)

// Kinds of pin directory, as in the pin layout.
var kindDirs = map[string]string{"maps": bpffs.Map, "programs": bpffs.Program, "links": bpffs.Link}

// nextSuffix marks the fd of a replacement while it is being stored (see
// Keeper.Sync). Pin names have no '.', so no name ends in it otherwise.
const nextSuffix = ".next"

// Entry is one BPF object in the store.
type Entry struct {
	// Name is the fd's name: its path under the pin root,
	// "<object>/<maps|programs|links>/<name>".
	Name string
	// FD is the object's fd; the Entry does not own it.
	FD int
	// Info says what the object is: its kind and id.
	Info bpffs.PinInfo
}

// ParseName splits an fd name into the object, the directory of the pin
// layout (maps, programs or links) and the pin's name, and says whether it
// is a replacement being stored (a name ending in ".next").
func ParseName(name string) (object, dir, pin string, next, ok bool) {
	name, next = strings.CutSuffix(name, nextSuffix)
	parts := strings.Split(name, "/")
	if len(parts) != 3 || parts[0] == "" || parts[2] == "" {
		return "", "", "", false, false
	}
	if _, ok := kindDirs[parts[1]]; !ok {
		return "", "", "", false, false
	}
	return parts[0], parts[1], parts[2], next, true
}

// Split separates, among the fds bpfsup was handed at start, those systemd
// gave back from the store (a BPF map, program or link named as a pin of
// that kind) from the rest, the sockets meant for the application. The
// stored ones are returned open, as os.Files, which the caller closes.
func Split(files []handoff.NamedFile) (stored []handoff.NamedFile, rest []handoff.NamedFile) {
	for _, f := range files {
		if isStored(f) {
			stored = append(stored, f)
		} else {
			rest = append(rest, f)
		}
	}
	return stored, rest
}

func isStored(f handoff.NamedFile) bool {
	_, dir, _, _, ok := ParseName(f.Name)
	if !ok {
		return false
	}
	kind, err := bpffs.FDKind(int(f.File.Fd()))
	// A tc filter's record is a map pinned where its link would be.
	return err == nil && (kind == kindDirs[dir] || dir == "links" && kind == bpffs.Map)
}

// Entries says what each stored fd holds.
func Entries(stored []handoff.NamedFile) []Entry {
	es := make([]Entry, len(stored))
	for i, f := range stored {
		fd := int(f.File.Fd())
		kind, _ := bpffs.FDKind(fd)
		es[i] = Entry{Name: f.Name, FD: fd, Info: bpffs.FDInfo(fd, kind)}
	}
	return es
}

// Max is the unit's FileDescriptorStoreMax=, which systemd 254 and later
// put in $FDSTORE; ok is false where it does not say.
func Max() (n int, ok bool) {
	v := os.Getenv("FDSTORE")
	if v == "" {
		return 0, false
	}
	n, err := strconv.Atoi(v)
	return n, err == nil
}

// ErrNoNotifySocket means bpfsup does not run under a service manager that
// takes its notifications, so there is no fd store to keep anything in.
var ErrNoNotifySocket = errors.New("NOTIFY_SOCKET is not set: bpfsup does not run as a systemd service (Type=notify, with FileDescriptorStoreMax=), so there is no fd store to keep objects in")

// Notifier sends to the service manager's notify socket.
type Notifier struct {
	fd   int
	addr *unix.SockaddrUnix
}

// Open opens a socket to NOTIFY_SOCKET. It returns ErrNoNotifySocket when
// the variable is unset.
func Open() (*Notifier, error) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil, ErrNoNotifySocket
	}
	if path[0] != '/' && path[0] != '@' {
		return nil, fmt.Errorf("NOTIFY_SOCKET=%s: only a unix socket (a path, or @ and an abstract name) can carry fds", path)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	return &Notifier{fd: fd, addr: &unix.SockaddrUnix{Name: path}}, nil
}

// Close closes the socket.
func (n *Notifier) Close() error { return unix.Close(n.fd) }

func (n *Notifier) send(state string, fd int) error {
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	if err := unix.Sendmsg(n.fd, []byte(state), oob, n.addr, 0); err != nil {
		return fmt.Errorf("notify socket %s: %w", n.addr.Name, err)
	}
	return nil
}

// Store stores fd under name.
func (n *Notifier) Store(name string, fd int) error {
	if err := handoff.CheckName(name); err != nil {
		return err
	}
	return n.send("FDSTORE=1\nFDNAME="+name+"\nFDPOLL=0", fd)
}

// Remove drops every fd stored under name.
func (n *Notifier) Remove(name string) error {
	if err := handoff.CheckName(name); err != nil {
		return err
	}
	return n.send("FDSTOREREMOVE=1\nFDNAME="+name, -1)
}

// Keeper keeps the store holding what bpfsup has pinned, and nothing else
// of bpfsup's: it knows what the store holds, by name and id, and sends only
// the difference.
type Keeper struct {
	n    *Notifier
	held map[string]uint32
}

// NewKeeper returns a Keeper for n, with the store holding handedBack (what
// systemd handed back at start).
func NewKeeper(n *Notifier, handedBack []Entry) *Keeper {
	k := &Keeper{n: n, held: map[string]uint32{}}
	for _, e := range handedBack {
		k.held[e.Name] = e.Info.ID
	}
	return k
}

// Held is the number of fds the store holds, as far as the Keeper knows.
func (k *Keeper) Held() int { return len(k.held) }

// Holds is what the store holds, as far as the Keeper knows: ids by name.
func (k *Keeper) Holds() map[string]uint32 { return maps.Clone(k.held) }

// Sync makes the store hold want, by name, and drop every other name it
// holds. An object replaced under its name (an upgrade's new program) goes
// through a second name: stored as "<name>.next", then the old one removed
// and the new one stored under its name, then "<name>.next" removed. At
// every step the store holds the new one under one name or the other, where
// the next start finds it by its id (see converge.Restore). It returns how
// many fds it stored and how many names it removed.
func (k *Keeper) Sync(want []Entry) (stored, removed int, err error) {
	names := map[string]bool{}
	for _, e := range want {
		names[e.Name] = true
		id, held := k.held[e.Name]
		switch {
		case held && id == e.Info.ID:
			continue
		case held:
			if err := k.replace(e); err != nil {
				return stored, removed, err
			}
		default:
			if err := k.n.Store(e.Name, e.FD); err != nil {
				return stored, removed, err
			}
		}
		k.held[e.Name] = e.Info.ID
		stored++
	}
	for name := range k.held {
		if names[name] {
			continue
		}
		if err := k.n.Remove(name); err != nil {
			return stored, removed, err
		}
		delete(k.held, name)
		removed++
	}
	return stored, removed, nil
}

// replace stores e's object in place of what the store holds under its
// name, without a moment where the store holds neither: under the ".next"
// name first, then, the old one removed, under its own name, then the
// ".next" one removed. systemd ignores an fd whose file description it
// already holds ("Suppressing duplicate fd" in service_add_fd_store), so the
// second store sends a file description of its own, opened by the object's
// id: with e.FD twice, the store would keep it only under the ".next" name,
// which the last step removes, losing the object.
func (k *Keeper) replace(e Entry) error {
	fresh, err := bpffs.OpenByID(e.Info.Kind, e.Info.ID)
	if err != nil {
		return fmt.Errorf("fd store: %s: %w", e.Name, err)
	}
	defer unix.Close(fresh)
	next := e.Name + nextSuffix
	if err := k.n.Store(next, e.FD); err != nil {
		return err
	}
	if err := k.n.Remove(e.Name); err != nil {
		return err
	}
	if err := k.n.Store(e.Name, fresh); err != nil {
		return err
	}
	return k.n.Remove(next)
}
