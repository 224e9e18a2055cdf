package converge

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/hooks"
	"github.com/bpfsup/bpfsup/internal/bpffs"
	"github.com/bpfsup/bpfsup/pinstore"
)

// ErrForeignPin means something pinned at one of bpfsup's paths was not put there
// by bpfsup and differs from what it would install. It is replaced only with
// --force (Options.Force).
var ErrForeignPin = errors.New("foreign pin at bpfsup's path")

// owned is what the manifest says bpfsup installed.
type owned struct {
	maps  map[string][]uint32
	progs map[string][]uint32
	links map[string][]uint32
	// progIDs holds every program id of the manifest, of any name.
	progIDs map[uint32]bool
	// none says there is no manifest at all.
	none bool
}

func ownedBy(m *pinstore.Manifest) owned {
	o := owned{maps: map[string][]uint32{}, progs: map[string][]uint32{}, links: map[string][]uint32{}, progIDs: map[uint32]bool{}}
	if m == nil {
		o.none = true
		return o
	}
	for name, r := range m.Maps {
		o.maps[name] = append([]uint32{r.ID}, r.PreviousIDs...)
	}
	for name, r := range m.Programs {
		ids := append([]uint32{r.ID}, r.PreviousIDs...)
		o.progs[name] = ids
		for _, id := range ids {
			o.progIDs[id] = true
		}
	}
	for name, r := range m.Links {
		o.links[name] = append([]uint32{r.ID}, r.PreviousIDs...)
	}
	return o
}

func hasID(ids []uint32, id uint32) bool {
	return id != 0 && slices.Contains(ids, id)
}

// foreignPin is one pin bpfsup refuses to replace without --force.
type foreignPin struct {
	path string
	// what the pin holds, and why it is not bpfsup's.
	what, why string
	// aside is set for a pin of the wrong kind: with --force it is moved out
	// of the way, since nothing can adopt or replace it in place.
	aside bool
}

func (f foreignPin) String() string {
	return fmt.Sprintf("%s holds %s: %s", f.path, f.what, f.why)
}

// foreignError is the error that stops an install over foreign pins.
func foreignError(object string, pins []foreignPin) error {
	lines := make([]string, len(pins))
	for i, f := range pins {
		lines[i] = "  " + f.String()
	}
	return fmt.Errorf("object %s: %w: bpfsup did not pin these, or they are not what the configuration asks for:\n%s\n"+
		"remove them, or run with --force to replace them (make-before-break)", object, ErrForeignPin, strings.Join(lines, "\n"))
}

// describePin says what the pin at path holds, with its ids and tags, for
// error messages and logs.
func describePin(path, kind string) string {
	switch kind {
	case bpffs.Map:
		if m, err := ebpf.LoadPinnedMap(path, nil); err == nil {
			defer m.Close()
			return describeMap(m)
		}
	case bpffs.Program:
		if p, err := ebpf.LoadPinnedProgram(path, nil); err == nil {
			defer p.Close()
			return DescribeProgram(p)
		}
	case bpffs.Link:
		if l, err := hooks.LoadPinned(path); err == nil {
			defer l.Close()
			return DescribeAttachment(l)
		}
	}
	return "a " + kind
}

func describeMap(m *ebpf.Map) string {
	s := fmt.Sprintf("a map (%s, key %d, value %d, max entries %d", m.Type(), m.KeySize(), m.ValueSize(), m.MaxEntries())
	if info, err := m.Info(); err == nil {
		id, _ := info.ID()
		s = fmt.Sprintf("map id %d %q (%s, key %d, value %d, max entries %d", id, info.Name, m.Type(), m.KeySize(), m.ValueSize(), m.MaxEntries())
	}
	return s + ")"
}

func DescribeProgram(p *ebpf.Program) string {
	info, err := p.Info()
	if err != nil {
		return fmt.Sprintf("a program (%s)", p.Type())
	}
	id, _ := info.ID()
	s := fmt.Sprintf("program id %d %q (%s, tag %s", id, info.Name, p.Type(), info.Tag)
	if lt, ok := info.LoadTime(); ok {
		s += ", loaded " + pinstore.WallTime(lt).Format(time.RFC3339)
	}
	return s + ")"
}

// DescribeAttachment says what a is, with its ids, for messages.
func DescribeAttachment(a hooks.Attachment) string {
	info, err := a.Info()
	if err != nil {
		return "a " + string(a.Kind())
	}
	what := "link"
	if info.Kind == hooks.KindTCFilter {
		what = "tc filter record"
	}
	s := fmt.Sprintf("%s id %d (%s, program id %d", what, info.ID, info.TypeName(), info.Program)
	if p, err := ebpf.NewProgramFromID(info.Program); err == nil {
		if pi, err := p.Info(); err == nil {
			s += fmt.Sprintf(" %q tag %s", pi.Name, pi.Tag)
		}
		p.Close()
	}
	if li := info.Link; li != nil {
		switch {
		case li.XDP() != nil && li.XDP().Ifindex == 0, li.TCX() != nil && li.TCX().Ifindex == 0:
			s += ", defunct"
		case li.XDP() != nil:
			s += fmt.Sprintf(", ifindex %d", li.XDP().Ifindex)
		case li.TCX() != nil:
			s += fmt.Sprintf(", ifindex %d", li.TCX().Ifindex)
		}
	}
	return s + ")"
}

func IDList(ids []uint32) string {
	var parts []string
	for _, id := range ids {
		if id != 0 {
			parts = append(parts, strconv.FormatUint(uint64(id), 10))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// Pins holds the programs and links an install found pinned, open, so that
// each pin is opened once (a BPF_OBJ_GET and a readlink) and its link's info
// read once, however many of the install's steps look at it. Whatever is
// still in the set when the install ends is closed.
type Pins struct {
	progs     map[string]*ebpf.Program // by pin path
	links     map[string]hooks.Attachment
	linkInfos map[string]*hooks.AttachmentInfo
	// manifest is the object's manifest when prefetchPins read it.
	manifest     *pinstore.Manifest
	manifestErr  error
	manifestRead bool
}

func newPins() *Pins {
	return &Pins{progs: map[string]*ebpf.Program{}, links: map[string]hooks.Attachment{}, linkInfos: map[string]*hooks.AttachmentInfo{}}
}

// Prefetch opens what is pinned for the object name before anything is
// decided about it (an adopt of the object unchanged, or its plan): the
// programs under programs/ and the links under links/, with their info,
// and the manifest. Nothing is
// changed, so the object's lock is not needed yet; a pin of the wrong kind
// is left for checkPinsBefore to find and report. After a crash that left
// something in staging, opening the object may move a link into place: then
// nothing is prefetched, and the install opens the pins after that.
func Prefetch(store pinstore.Store, name string) *Pins {
	ps := newPins()
	if pinstore.CheckName("object", name) != nil || store.HasStaged(name) {
		return ps
	}
	dir := store.ObjectDir(name)
	for kind, want := range map[pinstore.Kind]string{pinstore.Programs: bpffs.Program, pinstore.Links: bpffs.Link} {
		entries, err := os.ReadDir(filepath.Join(dir, string(kind)))
		if err != nil {
			continue
		}
		for _, e := range entries {
			if !e.Type().IsRegular() {
				continue
			}
			path := filepath.Join(dir, string(kind), e.Name())
			if !ps.open(path, want) {
				continue
			}
			if l := ps.links[path]; l != nil {
				if info, err := l.Info(); err == nil {
					ps.linkInfos[path] = info
				}
			}
		}
	}
	ps.manifest, ps.manifestErr = store.ReadManifest(name)
	ps.manifestRead = true
	return ps
}

// open opens the pin at path into the set when it holds a want (a program
// or a link), and reports whether it did.
func (ps *Pins) open(path, want string) bool {
	fd, k, err := bpffs.OpenPin(path)
	if err != nil {
		return false
	}
	if k != want {
		unix.Close(fd)
		return false
	}
	return ps.keep(path, fd, k) == nil
}

// keep wraps fd, opened from the pin at path and holding a program or a
// link (kind, as pinstore.OpenPin says), and keeps it in the set. It owns fd.
func (ps *Pins) keep(path string, fd int, kind string) error {
	switch kind {
	case bpffs.Program:
		p, err := ebpf.NewProgramFromFD(fd)
		if err != nil {
			return fmt.Errorf("open pin %s: %w", path, err)
		}
		ps.progs[path] = p
	case bpffs.Link:
		l, err := link.NewFromFD(fd)
		if err != nil {
			return fmt.Errorf("open pin %s: %w", path, err)
		}
		ps.links[path] = hooks.FromLink(l)
	default:
		unix.Close(fd)
		return fmt.Errorf("open pin %s: a %s, not a program or a link", path, kind)
	}
	return nil
}

// readManifest is the object's manifest, as prefetched or from disk.
func (ps *Pins) readManifest(store pinstore.Store, name string) (*pinstore.Manifest, error) {
	if ps.manifestRead {
		return ps.manifest, ps.manifestErr
	}
	return store.ReadManifest(name)
}

// takeProgram hands over the program pinned at path, or nil when the set
// has none (nothing pinned there, or already taken).
func (ps *Pins) takeProgram(path string) *ebpf.Program {
	p := ps.progs[path]
	delete(ps.progs, path)
	return p
}

// loadLink returns the link pinned at path, from the set or else from the
// pin (hooks.LoadPinned: a tc filter's record too), with its info. The set
// keeps it: close it only after taking it with takeLink.
func (ps *Pins) loadLink(path string) (hooks.Attachment, *hooks.AttachmentInfo, error) {
	l, ok := ps.links[path]
	if !ok {
		var err error
		if l, err = hooks.LoadPinned(path); err != nil {
			return nil, nil, err
		}
		ps.links[path] = l
	}
	if info := ps.linkInfos[path]; info != nil {
		return l, info, nil
	}
	info, err := l.Info()
	if err != nil {
		return nil, nil, err
	}
	ps.linkInfos[path] = info
	return l, info, nil
}

// takeLink removes the link at path from the set: the caller owns it.
func (ps *Pins) takeLink(path string) {
	delete(ps.links, path)
	delete(ps.linkInfos, path)
}

func (ps *Pins) close() {
	for path, p := range ps.progs {
		p.Close()
		delete(ps.progs, path)
	}
	for path, l := range ps.links {
		l.Close()
		ps.takeLink(path)
	}
}

// checkPinsBefore looks at every pin the plan will use before anything is
// made: pins of the wrong kind, and pinned maps incompatible with the object
// that the manifest does not list, are foreign. It returns them, and the
// maps that --force may reset. The programs and links it finds stay open in
// pins for the steps after it.
func checkPinsBefore(obj *pinstore.Object, p *Plan, own owned, pins *Pins) (foreign []foreignPin, resetMaps map[string]bool, err error) {
	resetMaps = map[string]bool{}
	check := func(path, want string) (bool, error) {
		if _, ok := pins.progs[path]; ok && want == bpffs.Program {
			return true, nil // prefetched: a program
		}
		if _, ok := pins.links[path]; ok && want == bpffs.Link {
			return true, nil
		}
		fd, kind, err := bpffs.OpenPin(path)
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if kind == want && (kind == bpffs.Program || kind == bpffs.Link) {
			if err := pins.keep(path, fd, kind); err != nil {
				return false, err
			}
			return true, nil
		}
		unix.Close(fd)
		if kind == want {
			return true, nil
		}
		if kind == bpffs.Map && want == bpffs.Link && hooks.IsFilterRecord(path) {
			return true, nil // a tc filter's record stands where its link would (hooks/tc.go)
		}
		foreign = append(foreign, foreignPin{path: path, what: describePin(path, kind),
			why: "bpfsup pins a " + want + " there", aside: true})
		return false, nil
	}
	for _, name := range p.maps {
		if p.mapCfg[name].PinPath != "" {
			continue // shared on purpose with another object or tool
		}
		path := obj.Path(pinstore.Maps, name)
		isMap, err := check(path, bpffs.Map)
		if err != nil || !isMap {
			if err != nil {
				return nil, nil, err
			}
			continue
		}
		m, err := ebpf.LoadPinnedMap(path, nil)
		if err != nil {
			return nil, nil, fmt.Errorf("load pinned map %s: %w", path, err)
		}
		incompat := p.spec.Maps[name].Compatible(m)
		var id ebpf.MapID
		if info, err := m.Info(); err == nil {
			id, _ = info.ID()
		}
		what := describeMap(m)
		m.Close()
		if hasID(own.maps[name], uint32(id)) {
			continue
		}
		// Compatible or not, a map bpfsup did not make is not adopted: its
		// contents are someone else's, and the object's programs would
		// read and write them.
		why := fmt.Sprintf("the manifest does not record it (map %s: id %s), so bpfsup did not make it", name, IDList(own.maps[name]))
		if own.none {
			why = fmt.Sprintf("there is no manifest of object %s in %s, so nothing says bpfsup made it (was the state directory removed?)", p.name, obj.Store().StateDirectory())
		}
		if incompat != nil {
			why += fmt.Sprintf("; it is also incompatible with the object's map (%v)", incompat)
		}
		foreign = append(foreign, foreignPin{path: path, what: what, why: why})
		resetMaps[name] = true
	}
	for _, name := range p.progList {
		if _, err := check(obj.Path(pinstore.Programs, name), bpffs.Program); err != nil {
			return nil, nil, err
		}
	}
	for _, pl := range p.links {
		if _, err := check(obj.Path(pinstore.Links, pl.name), bpffs.Link); err != nil {
			return nil, nil, err
		}
	}
	return foreign, resetMaps, nil
}

// checkPinsAfterLoad looks at the pinned programs and links once the
// object's programs are loaded (so their kernel tags are known), before
// anything is pinned or attached: a pinned program that differs from the
// object's and is not in the manifest is foreign, and so is a pinned link
// that is not in the manifest and runs a program that is not bpfsup's.
func checkPinsAfterLoad(obj *pinstore.Object, p *Plan, own owned, progs map[string]*pinstore.ProgramResult, pins *Pins) ([]foreignPin, error) {
	var foreign []foreignPin
	ours := map[uint32]bool{}
	for id := range own.progIDs {
		ours[id] = true
	}
	for _, name := range p.progList {
		r := progs[name]
		if r.Adopted {
			ours[uint32(r.Brief.ID)] = true
		} else if id, err := pinstore.ProgramID(r.Program); err == nil {
			ours[uint32(id)] = true
		}
		if r.Pinned == nil {
			continue
		}
		id, err := pinstore.ProgramID(r.Pinned)
		if err != nil {
			return nil, fmt.Errorf("program %s: pinned program: %w", name, err)
		}
		if hasID(own.progs[name], uint32(id)) {
			continue // an earlier generation of ours: the upgrade path
		}
		want := "the object's " + name
		if b, err := pinstore.BriefProgram(r.Program); err == nil {
			want += " (loads with tag " + b.Tag + ")"
		}
		foreign = append(foreign, foreignPin{path: r.Path, what: DescribeProgram(r.Pinned), why: fmt.Sprintf(
			"it is not %s of %s: %s; the manifest does not list it (ids %s)", want, p.cfg.Path, r.Mismatch, IDList(own.progs[name]))})
	}
	for _, pl := range p.links {
		path := obj.Path(pinstore.Links, pl.name)
		l, info, err := pins.loadLink(path)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("link %s: load pin %s: %w", pl.name, path, err)
		}
		if hasID(own.links[pl.name], info.ID) || ours[uint32(info.Program)] {
			continue
		}
		foreign = append(foreign, foreignPin{path: path, what: DescribeAttachment(l), why: fmt.Sprintf(
			"its program is not one bpfsup installed and the manifest does not list the link (ids %s)", IDList(own.links[pl.name]))})
	}
	return foreign, nil
}

// moveAside moves a foreign pin of the wrong kind into the staging
// directory (pinstore.Object.AsidePath), where the next start puts it back
// if this one does not replace it, and returns a function that puts it back.
func moveAside(obj *pinstore.Object, f foreignPin) (undo func(), err error) {
	aside, err := obj.AsidePath(f.path)
	if err != nil {
		return nil, err
	}
	if err := pinstore.RenameNoReplace(f.path, aside); err != nil {
		return nil, fmt.Errorf("move foreign pin aside: %w", err)
	}
	return func() { _ = pinstore.RenameNoReplace(aside, f.path) }, nil
}

// asidePath is where moveAside put f.
func asidePath(obj *pinstore.Object, f foreignPin) string {
	aside, _ := obj.AsidePath(f.path)
	return aside
}

func logForeign(log *slog.Logger, object string, pins []foreignPin) {
	for _, f := range pins {
		log.Warn("replacing foreign pin (--force)", "object", object, "pin", f.path, "was", f.what, "reason", f.why)
	}
}

// staleIsOurs says whether the pin of a program or link the configuration no
// longer has may be removed: only what the manifest says bpfsup pinned is.
// A foreign pin is left where it is, with a warning, even with --force, which
// replaces foreign pins only where the configuration puts bpfsup's own.
func staleIsOurs(obj *pinstore.Object, kind pinstore.Kind, name string, p *Plan, own owned, log *slog.Logger) bool {
	path := obj.Path(kind, name)
	ours := false
	switch kind {
	case pinstore.Programs:
		if pr, err := ebpf.LoadPinnedProgram(path, nil); err == nil {
			if info, err := pr.Info(); err == nil {
				id, _ := info.ID()
				ours = hasID(own.progs[name], uint32(id))
			}
			pr.Close()
		}
	case pinstore.Links:
		if l, err := hooks.LoadPinned(path); err == nil {
			if info, err := l.Info(); err == nil {
				ours = hasID(own.links[name], info.ID) || own.progIDs[uint32(info.Program)]
			}
			l.Close()
		}
	}
	if ours {
		return true
	}
	kindName, _ := bpffs.PinKind(path)
	log.Warn("leaving a pin bpfsup did not make, though the configuration no longer has it; remove it by hand if it is not wanted",
		"object", p.name, "pin", path, "holds", describePin(path, kindName))
	return false
}

// carryStale keeps, in a write-ahead manifest, the records of programs and
// links the new configuration drops: they stay pinned until the install
// removes them, and a crash before then must leave them recognisable as
// bpfsup's own.
func carryStale(m, old *pinstore.Manifest) {
	if old == nil {
		return
	}
	for name, rec := range old.Programs {
		if _, ok := m.Programs[name]; !ok {
			m.Programs[name] = rec
		}
	}
	for name, rec := range old.Links {
		if _, ok := m.Links[name]; !ok {
			m.Links[name] = rec
		}
	}
}
