package hooks

import (
	"errors"
	"fmt"
	"os"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Attachment is a program attached to a hook: a bpf_link for most hooks, a
// tc filter with a pinned record of it for the tc hook (and tcx's fallback
// to it, see tc.go). Each says what it can do: Update in place, FD to hand
// over (a link's only), Info with its kind and its id.
type Attachment interface {
	// Kind says what the attachment is.
	Kind() AttachmentKind
	// Info asks the kernel about the attachment.
	Info() (*AttachmentInfo, error)
	// Update swaps the program for prog, in place: atomically for every
	// packet or event. When old is not nil, only if the attachment runs old
	// still (EPERM otherwise; BPF_F_REPLACE for a link).
	Update(prog, old *ebpf.Program) error
	// Pin pins the attachment at path: the link, or the filter's record.
	Pin(path string) error
	// Unpin removes the pin the attachment was loaded from or pinned at.
	Unpin() error
	// Detach takes the program off its hook, whatever holds the attachment.
	Detach() error
	// Close releases the attachment's fd. An attachment that nothing pins
	// is detached with it.
	Close() error
	// FD is the bpf_link's fd, to hand a duplicate of to the application;
	// ok is false for a tc filter, which has none.
	FD() (fd int, ok bool)
}

// AttachmentKind says what an attachment is.
type AttachmentKind string

// The kinds of attachments, as the manifest records them.
const (
	// KindLink is a bpf_link.
	KindLink AttachmentKind = "link"
	// KindTCFilter is a tc filter, pinned as a record (a one-entry BPF
	// array) where a link would be.
	KindTCFilter AttachmentKind = "tc_filter"
)

// AttachmentInfo is what the kernel says of an attachment.
type AttachmentInfo struct {
	Kind AttachmentKind
	// ID is the link's id, or the id of a tc filter's record (a map's):
	// like a link's, it stays when the program is swapped in place and
	// changes when the program is attached anew.
	ID uint32
	// Program is the id of the program the attachment runs, 0 when none
	// (a tc filter that is gone).
	Program ebpf.ProgramID
	// Link is the kernel's info of the bpf_link; nil for a tc filter.
	Link *link.Info
}

// linkAttachment is an Attachment that is a bpf_link.
type linkAttachment struct{ l link.Link }

// attached makes l, a new link or one loaded from a pin, an Attachment.
func attached(l link.Link) Attachment { return &linkAttachment{l} }

func (a *linkAttachment) Kind() AttachmentKind { return KindLink }

// FD is the link's fd. cilium/ebpf's links have one (link.RawLink.FD), but
// its Link interface does not say so.
func (a *linkAttachment) FD() (int, bool) {
	if f, ok := a.l.(interface{ FD() int }); ok {
		return f.FD(), true
	}
	return -1, false
}
func (a *linkAttachment) Pin(path string) error {
	return a.l.Pin(path)
}
func (a *linkAttachment) Unpin() error  { return a.l.Unpin() }
func (a *linkAttachment) Detach() error { return a.l.Detach() }
func (a *linkAttachment) Close() error  { return a.l.Close() }

func (a *linkAttachment) Info() (*AttachmentInfo, error) {
	info, err := a.l.Info()
	if err != nil {
		return nil, err
	}
	return &AttachmentInfo{Kind: KindLink, ID: uint32(info.ID), Program: info.Program, Link: info}, nil
}

func (a *linkAttachment) Update(prog, old *ebpf.Program) error {
	if old == nil {
		return a.l.Update(prog)
	}
	u, ok := a.l.(interface {
		UpdateArgs(link.RawLinkUpdateOptions) error
	})
	if !ok {
		return fmt.Errorf("update link: compare-and-swap: %w", ErrNotSupported)
	}
	return u.UpdateArgs(link.RawLinkUpdateOptions{New: prog, Old: old, Flags: unix.BPF_F_REPLACE})
}

// linkInfoOf is the bpf_link info of a, nil for a tc filter.
func linkInfoOf(a Attachment) (*link.Info, error) {
	info, err := a.Info()
	if err != nil {
		return nil, err
	}
	return info.Link, nil
}

// Reopen opens a second handle of the attachment a, which knows no pin: a
// bpf_link by its id, a tc filter by what it is. Pinning it makes a new
// pin without moving a's; closing it leaves the attachment in place.
func Reopen(a Attachment) (Attachment, error) {
	switch a := a.(type) {
	case *tcAttachment:
		return &tcAttachment{rec: a.rec, recordID: a.recordID}, nil
	case *linkAttachment:
		info, err := a.l.Info()
		if err != nil {
			return nil, err
		}
		l, err := link.NewFromID(info.ID)
		if err != nil {
			return nil, err
		}
		return attached(l), nil
	}
	return nil, fmt.Errorf("reopen %T: %w", a, ErrNotSupported)
}

// Alive reports whether the attachment of kind with id is still in the
// kernel: a link by its id, a tc filter by its record's (a map's).
func Alive(kind AttachmentKind, id uint32) bool {
	var err error
	if kind == KindTCFilter {
		var m *ebpf.Map
		if m, err = ebpf.NewMapFromID(ebpf.MapID(id)); err == nil {
			m.Close()
		}
	} else {
		var l link.Link
		if l, err = link.NewFromID(link.ID(id)); err == nil {
			l.Close()
		}
	}
	return err == nil || !errors.Is(err, os.ErrNotExist)
}

// FromLink makes l, a bpf_link, an Attachment.
func FromLink(l link.Link) Attachment { return attached(l) }

// LinkTypeName names the type of a link as bpftool does ("xdp", "tcx"...).
func LinkTypeName(t link.Type) string {
	switch t {
	case link.XDPType:
		return "xdp"
	case link.TCXType:
		return "tcx"
	case link.NetkitType:
		return "netkit"
	case link.CgroupType:
		return "cgroup"
	case link.RawTracepointType:
		return "raw_tracepoint"
	case link.TracingType:
		return "tracing"
	case link.PerfEventType:
		return "perf_event"
	case link.NetNsType:
		return "netns"
	case link.NetfilterType:
		return "netfilter"
	case link.KprobeMultiType:
		return "kprobe_multi"
	case link.UprobeMultiType:
		return "uprobe_multi"
	}
	return fmt.Sprintf("type %d", t)
}

// TypeName names the type of the attachment of info: a link's type, or
// "tc filter".
func (info *AttachmentInfo) TypeName() string {
	if info.Link == nil {
		return "tc filter"
	}
	return LinkTypeName(info.Link.Type)
}
