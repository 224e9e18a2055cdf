package hooks

import (
	"errors"
	"fmt"
	"os"

	"github.com/bpfsup/bpfsup/internal/bpffs"

	"github.com/cilium/ebpf/link"
)

// What sits at a link's pin path: a bpf_link for most hooks, the record of a
// tc filter for the tc hook (and tcx's fallback to it). These functions take
// either, so that callers need not know which mechanism a hook uses.

// BindPin tells h where its link will be pinned, before Attach. Hooks whose
// attachments are not bpf_links (tc filters) name what they attach after it,
// so that an attachment made by a process that died before pinning it is
// found again instead of duplicated; other hooks ignore it.
func BindPin(h Hook, path string) {
	if b, ok := h.(interface{ bindPin(string) }); ok {
		b.bindPin(path)
	}
}

// Caveat says which of bpfsup's promises h cannot keep on this kernel, or ""
// when it keeps them all; bpfsup logs it when it starts.
func Caveat(h Hook) string {
	if c, ok := h.(interface{ Caveat() string }); ok {
		return c.Caveat()
	}
	return ""
}

// LoadPinned loads the attachment pinned at path: a bpf_link, or a tc
// filter from its record. A missing pin is an error wrapping
// os.ErrNotExist.
func LoadPinned(path string) (Attachment, error) {
	// A bpf_link first, which is what is pinned nearly always; what else is
	// there is only looked at when it is not one.
	l, err := link.LoadPinnedLink(path, nil)
	if err == nil {
		return attached(l), nil
	}
	if errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	kind, kerr := bpffs.PinKind(path)
	if kerr != nil {
		return nil, kerr
	}
	if kind != bpffs.Map {
		return nil, err
	}
	rec, id, err := readTCRecordID(path)
	if err != nil {
		return nil, fmt.Errorf("load pinned link %s: %w", path, err)
	}
	return &tcAttachment{rec: rec, fromPin: path, recordID: id}, nil
}

// IsFilterRecord reports whether path holds the record of a tc filter, which
// is pinned where a link would be for hooks without bpf_links.
func IsFilterRecord(path string) bool {
	_, err := readTCRecord(path)
	return err == nil
}

// Unpin removes the link pinned at path, detached: a bpf_link is detached
// first (BPF_LINK_DETACH), since the removal of its pin releases it only a
// moment later (bpffs frees the inode after an RCU grace period), and an XDP
// program still in place then makes the next attach on the interface fail
// with EBUSY; a link type without detach (perf events) goes with its last
// reference. A tc filter, which no pin holds, is deleted first. A missing
// pin is not an error.
func Unpin(path string) error {
	kind, err := bpffs.PinKind(path)
	if err == nil && kind == "" {
		return nil
	}
	if err == nil && kind == bpffs.Link {
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			return fmt.Errorf("unpin %s: %w", path, err)
		}
		defer l.Close()
		if err := l.Detach(); err != nil && !errors.Is(err, ErrNotSupported) {
			return fmt.Errorf("unpin %s: %w", path, err)
		}
	}
	if err == nil && kind == bpffs.Map {
		rec, err := readTCRecord(path)
		if err != nil {
			return fmt.Errorf("unpin %s: %w", path, err)
		}
		a := &tcAttachment{rec: rec}
		if err := a.Detach(); err != nil {
			return fmt.Errorf("unpin %s: %w", path, err)
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unpin %s: %w", path, err)
	}
	return nil
}
