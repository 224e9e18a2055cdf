package converge

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/fdstore"
	"github.com/bpfsup/bpfsup/internal/bpffs"
	"github.com/bpfsup/bpfsup/pinstore"
)

// Restore pins again, from the fds systemd's fd store handed back, what
// the objects' manifests record and bpffs no longer has: pins removed while
// bpfsup was down, or every pin when they live in a bpffs of bpfsup's own
// (pins = false). It runs before Install, which then adopts the pins as
// always. An fd is pinned only where nothing is pinned and only when the
// object's manifest records its id at that path: anything else systemd
// handed back is left for the store's next sync to drop. Among fds of one
// path (a replacement stored as "<name>.next", see fdstore.Keeper), the one
// the manifest records as current wins. Only objects named in objects are
// restored. It returns the paths it pinned.
func Restore(store pinstore.Store, objects []string, entries []fdstore.Entry, log *slog.Logger) ([]string, error) {
	if len(entries) == 0 {
		return nil, nil
	}
	if _, err := pinstore.EnsureBPFFS(store.RootDir()); err != nil {
		return nil, err
	}
	byObject := map[string][]fdstore.Entry{}
	for _, e := range entries {
		obj, _, _, _, ok := fdstore.ParseName(e.Name)
		if ok {
			byObject[obj] = append(byObject[obj], e)
		}
	}
	var restored []string
	for _, name := range objects {
		es := byObject[name]
		if len(es) == 0 {
			continue
		}
		paths, err := restoreObject(store, name, es, log)
		restored = append(restored, paths...)
		if err != nil {
			return restored, err
		}
	}
	return restored, nil
}

func restoreObject(store pinstore.Store, name string, es []fdstore.Entry, log *slog.Logger) ([]string, error) {
	man, err := store.ReadManifest(name)
	if err != nil {
		return nil, err
	}
	if man == nil {
		log.Warn("systemd's fd store holds fds of an object no manifest records; they are dropped from the store once the objects are installed",
			"object", name, "fds", len(es))
		return nil, nil
	}
	obj, err := store.Open(name)
	if err != nil {
		return nil, err
	}
	defer obj.Close()
	var restored []string
	for target, e := range pickCurrent(obj, man, es) {
		if pinstore.Exists(target) {
			continue
		}
		if err := pinFD(obj, target, e); err != nil {
			return restored, fmt.Errorf("object %s: restore %s from systemd's fd store: %w", name, target, err)
		}
		log.Info("pinned again from systemd's fd store", "object", name, "pin", target, "id", e.Info.ID)
		restored = append(restored, target)
	}
	return restored, nil
}

// pickCurrent chooses, for each pin path of the object, the entry the
// manifest records there: its current id before an earlier one.
func pickCurrent(obj *pinstore.Object, man *pinstore.Manifest, es []fdstore.Entry) map[string]fdstore.Entry {
	chosen := map[string]fdstore.Entry{}
	current := map[string]bool{}
	for _, e := range es {
		_, dir, pin, _, _ := fdstore.ParseName(e.Name)
		kind := pinstore.Kind(dir)
		if !man.Owns(kind, pin, e.Info) {
			continue
		}
		target := obj.Path(kind, pin)
		if kind == pinstore.Maps {
			r := man.Maps[pin]
			if r.Path != "" && filepath.Clean(r.Path) != target {
				continue // a map at a pin path of its own: never named so
			}
		}
		isCurrent := recordedID(man, kind, pin) == e.Info.ID
		if _, ok := chosen[target]; !ok || (isCurrent && !current[target]) {
			chosen[target], current[target] = e, isCurrent
		}
	}
	return chosen
}

func recordedID(man *pinstore.Manifest, kind pinstore.Kind, name string) uint32 {
	switch kind {
	case pinstore.Maps:
		return man.Maps[name].ID
	case pinstore.Programs:
		return man.Programs[name].ID
	case pinstore.Links:
		return man.Links[name].ID
	}
	return 0
}

// pinFD pins the object of e's fd at target, through the object's staging
// directory as every pin is made.
func pinFD(obj *pinstore.Object, target string, e fdstore.Entry) error {
	fd, err := unix.FcntlInt(uintptr(e.FD), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return err
	}
	var p interface {
		pinstore.Pinner
		io.Closer
	}
	switch e.Info.Kind {
	case bpffs.Map:
		p, err = ebpf.NewMapFromFD(fd)
	case bpffs.Program:
		p, err = ebpf.NewProgramFromFD(fd)
	case bpffs.Link:
		p, err = link.NewFromFD(fd)
	default:
		unix.Close(fd)
		return fmt.Errorf("fd %d is a %s, not a map, program or link", e.FD, e.Info.Kind)
	}
	if err != nil {
		return err
	}
	defer p.Close()
	_, dir, _, _, _ := fdstore.ParseName(e.Name)
	return obj.Pin(pinstore.Kind(dir), target, p)
}

// StoreEntries opens what the object has pinned in its directory and its
// manifest records as bpfsup's (maps, programs, links and tc filters'
// records), named as systemd's fd store names them; close closes the fds.
func (in *Installed) StoreEntries() (_ []fdstore.Entry, close func(), err error) {
	var fds []int
	close = func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	var es []fdstore.Entry
	for _, kind := range []pinstore.Kind{pinstore.Maps, pinstore.Programs, pinstore.Links} {
		names, err := in.obj.Pins(kind)
		if err != nil {
			close()
			return nil, nil, err
		}
		for _, pin := range names {
			fd, k, err := bpffs.OpenPin(in.obj.Path(kind, pin))
			if err != nil {
				if os.IsNotExist(err) {
					continue
				}
				close()
				return nil, nil, err
			}
			fds = append(fds, fd)
			info := bpffs.FDInfo(fd, k)
			if !in.manifest.Owns(kind, pin, info) {
				continue
			}
			es = append(es, fdstore.Entry{Name: in.plan.name + "/" + string(kind) + "/" + pin, FD: fd, Info: info})
		}
	}
	return es, close, nil
}
