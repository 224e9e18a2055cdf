package hooks

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The tc hook: a SchedCLS program in a cls_bpf filter (direct action) on the
// clsact qdisc of an interface, the way BPF ran on tc before tcx (Linux 6.6).
// It is a hook of its own ("tc/ingress:veth0", on every kernel) and what a
// tcx hook falls back to on a kernel without tcx.
//
// A tc filter is not a bpf_link: it has no fd and cannot be pinned, and it
// stays in the kernel, whoever made it, until it is deleted or its interface
// goes. bpfsup keeps the link promises as far as that allows:
//
//   - The Attachment that Attach returns is a *tcAttachment, whose Pin
//     pins a record of the filter (a one-entry BPF array, "bpfsup_tc", naming
//     the namespace, interface, direction, priority and handle) where the link
//     would be pinned. LoadPinned turns such a record back into an attachment,
//     so adopting after a restart works as for links: the filter survived the
//     crash on its own.
//   - Update swaps the filter's program with a tc "replace" of the same
//     handle, which cls_bpf does under RCU: every packet meets the old
//     program or the new one, never none. The compare-and-swap of
//     BPF_F_REPLACE is a check before the swap, not atomic with it: bpfsup's
//     lock on the object keeps other bpfsup processes out, not other tools.
//   - An attachment closed while no record names it detaches its filter, as
//     a link closed without a pin detaches; Unpin (the package function)
//     detaches and removes a record, which is what `bpfsup down` needs.
//   - What cannot be kept: another tool can delete the filter (tc filter
//     del, or deleting the clsact qdisc), and there is no link fd to hand to
//     the child. Caveat says so, and bpfsup logs it when it starts.

func init() {
	register("tc", kind{
		variants:    []string{"ingress", "egress"},
		needsTarget: true,
		network:     true,
		make:        func(s Spec) (Hook, error) { return &tcHook{spec: s}, nil },
	})
}

// tcPriority is the priority of bpfsup's filters: ahead of the priorities tc
// picks itself (49152 and down), behind the low numbers people choose.
const tcPriority = 0x100

// tcFilterPrefix starts the name of every filter bpfsup makes: a filter in
// bpfsup's priority without it belongs to someone else and is left alone.
const tcFilterPrefix = "bpfsup"

// tcHook attaches a SchedCLS program with a cls_bpf filter on clsact.
type tcHook struct {
	spec Spec
	// fallback: the hook stands in for a tcx hook on a kernel without tcx.
	fallback bool

	mu sync.Mutex
	// pinPath is where the attachment's record will be pinned, when known
	// (BindPin): the filter's handle and name derive from it, so that a
	// filter whose record was never pinned (a crash in between) is found and
	// replaced by the next attach instead of left running twice.
	pinPath string
}

func (h *tcHook) Spec() Spec      { return h.spec }
func (h *tcHook) Updatable() bool { return true }

func (h *tcHook) Mechanism() string {
	if h.fallback {
		return "tc clsact filter (fallback: no tcx)"
	}
	return "tc clsact filter"
}

// Caveat says which promises a tc filter cannot keep.
func (h *tcHook) Caveat() string {
	msg := "a tc filter is not a bpf_link: another tool can remove it (tc filter del, or deleting the clsact qdisc), and it cannot be handed to the child as a link fd; adopt on restart and atomic upgrades work"
	if h.fallback {
		return "this kernel has no tcx (Linux 6.6+); " + h.spec.String() + " is attached with a tc clsact filter instead: " + msg
	}
	return msg
}

func (h *tcHook) bindPin(path string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pinPath = filepath.Clean(path)
}

func (h *tcHook) egress() bool { return h.spec.Variant == "egress" }

func (h *tcHook) Attach(prog *ebpf.Program) (Attachment, error) {
	if err := checkType(h.spec, prog, ebpf.SchedCLS); err != nil {
		return nil, err
	}
	h.mu.Lock()
	pinPath := h.pinPath
	h.mu.Unlock()
	a := &tcAttachment{fresh: true, rec: tcRecord{
		Netns:  h.spec.Netns,
		Ifname: h.spec.Target,
		Parent: tcParent(h.egress()),
		Prio:   tcPriority,
	}}
	name := tcFilterPrefix
	if pinPath != "" {
		name = tcFilterPrefix + ":" + pinPath
	}
	err := InNetns(h.spec.Netns, func() error {
		idx, err := ifindexHere(h.spec.Netns, h.spec.Target)
		if err != nil {
			return err
		}
		a.rec.Ifindex = uint32(idx)
		nl, err := openRtnl()
		if err != nil {
			return err
		}
		defer nl.close()
		if err := nl.addClsact(idx); err != nil {
			return err
		}
		existing, err := nl.filters(idx, a.rec.Parent)
		if err != nil {
			return err
		}
		if pinPath != "" {
			a.rec.Handle = tcHandle(pinPath)
			for _, f := range existing {
				if f.prio == tcPriority && f.handle == a.rec.Handle && !strings.HasPrefix(f.name, tcFilterPrefix) {
					return fmt.Errorf("handle %#x of priority %d holds a tc filter bpfsup did not make (%q): %w", f.handle, f.prio, f.name, unix.EEXIST)
				}
			}
			// A filter of ours already there was attached for this record
			// by a process that died before pinning it: take it over.
			return nl.replaceFilter(idx, a.rec.Parent, tcPriority, a.rec.Handle, prog.FD(), name, false)
		}
		// No record to name the filter after: the first free handle.
		used := map[uint32]bool{}
		for _, f := range existing {
			if f.prio == tcPriority {
				used[f.handle] = true
			}
		}
		for handle := uint32(1); ; handle++ {
			if used[handle] {
				continue
			}
			err := nl.replaceFilter(idx, a.rec.Parent, tcPriority, handle, prog.FD(), name, true)
			if errors.Is(err, unix.EEXIST) {
				continue // taken meanwhile
			}
			a.rec.Handle = handle
			return err
		}
	})
	if err != nil {
		return nil, fmt.Errorf("attach %s (tc clsact filter): %w", h.spec, err)
	}
	return a, nil
}

func (h *tcHook) Check(at Attachment) (State, error) {
	a, ok := at.(*tcAttachment)
	if !ok || a.rec.Netns != h.spec.Netns || a.rec.Ifname != h.spec.Target || a.rec.Parent != tcParent(h.egress()) {
		return Elsewhere, nil
	}
	f, err := a.filter()
	if err != nil {
		return 0, err
	}
	if f == nil {
		// The interface, the qdisc or the filter went away: what a link
		// whose interface is deleted is, defunct until attached anew.
		return Defunct, nil
	}
	return Attached, nil
}

// tcHandle derives a filter handle from the path of its record.
func tcHandle(pinPath string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(pinPath))
	if v := h.Sum32(); v != 0 {
		return v
	}
	return 1
}

// tcRecord says where a filter is. Pinned as the value of a one-entry array.
type tcRecord struct {
	Netns   string // the namespace's path as configured; "" for bpfsup's own
	Ifname  string
	Ifindex uint32
	Parent  uint32
	Prio    uint16
	Handle  uint32
}

const (
	tcRecordMagic   = 0x62707463 // "bptc"
	tcRecordMapName = "bpfsup_tc"
	tcRecordNetns   = 512
	// magic, ifindex, parent, handle, prio+pad, ifname, netns.
	tcRecordSize = 4 + 4 + 4 + 4 + 4 + unix.IFNAMSIZ + tcRecordNetns
)

func (r tcRecord) marshal() ([]byte, error) {
	if len(r.Netns) >= tcRecordNetns || len(r.Ifname) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("tc filter record: namespace path or interface name too long")
	}
	b := make([]byte, tcRecordSize)
	binary.LittleEndian.PutUint32(b[0:], tcRecordMagic)
	binary.LittleEndian.PutUint32(b[4:], r.Ifindex)
	binary.LittleEndian.PutUint32(b[8:], r.Parent)
	binary.LittleEndian.PutUint32(b[12:], r.Handle)
	binary.LittleEndian.PutUint16(b[16:], r.Prio)
	copy(b[20:], r.Ifname)
	copy(b[20+unix.IFNAMSIZ:], r.Netns)
	return b, nil
}

func unmarshalTCRecord(b []byte) (tcRecord, error) {
	if len(b) != tcRecordSize || binary.LittleEndian.Uint32(b) != tcRecordMagic {
		return tcRecord{}, errors.New("not a bpfsup tc filter record")
	}
	cstr := func(b []byte) string {
		if i := bytes.IndexByte(b, 0); i >= 0 {
			b = b[:i]
		}
		return string(b)
	}
	return tcRecord{
		Ifindex: binary.LittleEndian.Uint32(b[4:]),
		Parent:  binary.LittleEndian.Uint32(b[8:]),
		Handle:  binary.LittleEndian.Uint32(b[12:]),
		Prio:    binary.LittleEndian.Uint16(b[16:]),
		Ifname:  cstr(b[20 : 20+unix.IFNAMSIZ]),
		Netns:   cstr(b[20+unix.IFNAMSIZ:]),
	}, nil
}

func (r tcRecord) sameFilter(o tcRecord) bool {
	return r.Netns == o.Netns && r.Ifindex == o.Ifindex && r.Parent == o.Parent && r.Prio == o.Prio && r.Handle == o.Handle
}

// tcAttachment is a tc filter, an Attachment of kind KindTCFilter.
type tcAttachment struct {
	rec tcRecord
	// fresh: made by Attach in this process; closed unpinned, it detaches.
	fresh bool
	// pinned: Pin made a record of it.
	pinned bool
	// fromPin is the record's path when the attachment was loaded from it.
	fromPin string
	// recordID is the id of the record's map once pinned or loaded: what
	// Info reports as the link's id, since a filter has none. Like a
	// link's, it stays when the program is swapped and changes when the
	// filter is attached anew (a new record).
	recordID uint32
	closed   bool
}

var _ Attachment = (*tcAttachment)(nil)

func (a *tcAttachment) Kind() AttachmentKind { return KindTCFilter }

// FD: a tc filter is no bpf_link, and has no fd to hand over.
func (a *tcAttachment) FD() (int, bool) { return -1, false }

// filter returns the filter as the kernel lists it, or nil when it, its
// qdisc or its interface is gone.
func (a *tcAttachment) filter() (*tcFilter, error) {
	var found *tcFilter
	err := InNetns(a.rec.Netns, func() error {
		idx, err := ifindexHere(a.rec.Netns, a.rec.Ifname)
		if err != nil || uint32(idx) != a.rec.Ifindex {
			return nil // gone, or a new interface of the same name
		}
		nl, err := openRtnl()
		if err != nil {
			return err
		}
		defer nl.close()
		filters, err := nl.filters(idx, a.rec.Parent)
		if err != nil {
			return err
		}
		for _, f := range filters {
			if f.prio == a.rec.Prio && f.handle == a.rec.Handle {
				found = &f
				return nil
			}
		}
		return nil
	})
	// A namespace or interface that is gone took the filter with it.
	if err != nil && !errors.Is(err, ErrTargetNotFound) && !errIsGone(err) {
		return nil, fmt.Errorf("tc filter %s: %w", a, err)
	}
	return found, nil
}

func (a *tcAttachment) String() string {
	where := a.rec.Ifname
	if a.rec.Netns != "" {
		where += " in " + a.rec.Netns
	}
	dir := "ingress"
	if a.rec.Parent == tcParent(true) {
		dir = "egress"
	}
	return fmt.Sprintf("%s %s prio %d handle %#x", where, dir, a.rec.Prio, a.rec.Handle)
}

// Update swaps the filter's program for prog, atomically for packets: a tc
// "replace" of the same handle, which cls_bpf does under RCU. With old, the
// filter must run old (EPERM otherwise, as the kernel answers for links);
// the check comes before the swap, not atomically with it. A filter that is
// gone is ENOLINK, as for a defunct link.
func (a *tcAttachment) Update(prog, old *ebpf.Program) error {
	return a.update(prog, old)
}

func (a *tcAttachment) update(prog, old *ebpf.Program) error {
	if prog == nil {
		return fmt.Errorf("update tc filter %s: no program", a)
	}
	f, err := a.filter()
	if err != nil {
		return err
	}
	if f == nil {
		return fmt.Errorf("update tc filter %s: %w", a, unix.ENOLINK)
	}
	if old != nil {
		info, err := old.Info()
		if err != nil {
			return fmt.Errorf("update tc filter %s: %w", a, err)
		}
		if id, _ := info.ID(); uint32(id) != f.progID {
			return fmt.Errorf("update tc filter %s: it runs program %d, not %d: %w", a, f.progID, id, unix.EPERM)
		}
	}
	err = InNetns(a.rec.Netns, func() error {
		nl, err := openRtnl()
		if err != nil {
			return err
		}
		defer nl.close()
		return nl.replaceFilter(int(a.rec.Ifindex), a.rec.Parent, a.rec.Prio, a.rec.Handle, prog.FD(), f.name, false)
	})
	if err != nil {
		return fmt.Errorf("update tc filter %s: %w", a, err)
	}
	return nil
}

// Pin pins a record of the filter at path.
func (a *tcAttachment) Pin(path string) error {
	data, err := a.rec.marshal()
	if err != nil {
		return err
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       tcRecordMapName,
		Type:       ebpf.Array,
		KeySize:    4,
		ValueSize:  tcRecordSize,
		MaxEntries: 1,
	})
	if err != nil {
		return fmt.Errorf("pin tc filter record: create map: %w", err)
	}
	defer m.Close()
	if err := m.Put(uint32(0), data); err != nil {
		return fmt.Errorf("pin tc filter record: %w", err)
	}
	if err := m.Pin(path); err != nil {
		return fmt.Errorf("pin tc filter record: %w", err)
	}
	a.pinned = true
	if info, err := m.Info(); err == nil {
		id, _ := info.ID()
		a.recordID = uint32(id)
	}
	return nil
}

// Unpin removes the record the attachment was loaded from.
func (a *tcAttachment) Unpin() error {
	if a.fromPin == "" {
		return fmt.Errorf("unpin tc filter %s: not loaded from a pin", a)
	}
	if err := os.Remove(a.fromPin); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unpin tc filter %s: %w", a, err)
	}
	a.fromPin = ""
	return nil
}

// Detach deletes the filter.
func (a *tcAttachment) Detach() error {
	err := InNetns(a.rec.Netns, func() error {
		nl, err := openRtnl()
		if err != nil {
			return err
		}
		defer nl.close()
		return nl.deleteFilter(int(a.rec.Ifindex), a.rec.Parent, a.rec.Prio, a.rec.Handle)
	})
	if err != nil && !errIsGone(err) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("detach tc filter %s: %w", a, err)
	}
	return nil
}

// Close detaches the filter when no record names it: an attachment made
// here and never pinned, or one loaded from a record that has since been
// removed or now names another filter. Otherwise the filter stays.
func (a *tcAttachment) Close() error {
	if a.closed {
		return nil
	}
	a.closed = true
	switch {
	case a.fresh && !a.pinned:
		return a.Detach()
	case a.fromPin != "":
		rec, err := readTCRecord(a.fromPin)
		if err == nil && rec.sameFilter(a.rec) {
			return nil
		}
		return a.Detach()
	}
	return nil
}

// Info reports the filter's program, and as the id that of its record (0
// before it is pinned).
func (a *tcAttachment) Info() (*AttachmentInfo, error) {
	f, err := a.filter()
	if err != nil {
		return nil, err
	}
	info := &AttachmentInfo{Kind: KindTCFilter, ID: a.recordID}
	if f != nil {
		info.Program = ebpf.ProgramID(f.progID)
	}
	return info, nil
}

func readTCRecord(path string) (tcRecord, error) {
	rec, _, err := readTCRecordID(path)
	return rec, err
}

// readTCRecordID reads the record at path and the id of its map.
func readTCRecordID(path string) (_ tcRecord, id uint32, _ error) {
	m, err := ebpf.LoadPinnedMap(path, &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return tcRecord{}, 0, err
	}
	defer m.Close()
	if info, err := m.Info(); err == nil {
		mid, _ := info.ID()
		id = uint32(mid)
	}
	if m.Type() != ebpf.Array || m.KeySize() != 4 || m.ValueSize() != tcRecordSize || m.MaxEntries() != 1 {
		return tcRecord{}, 0, fmt.Errorf("%s: not a bpfsup tc filter record", path)
	}
	data := make([]byte, tcRecordSize)
	if err := m.Lookup(uint32(0), data); err != nil {
		return tcRecord{}, 0, fmt.Errorf("read tc filter record %s: %w", path, err)
	}
	rec, err := unmarshalTCRecord(data)
	if err != nil {
		return tcRecord{}, 0, fmt.Errorf("%s: %w", path, err)
	}
	return rec, id, nil
}
