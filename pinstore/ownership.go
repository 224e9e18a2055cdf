package pinstore

import (
	"slices"

	"github.com/bpfsup/bpfsup/internal/bpffs"
)

// What bpfsup made is what an object's manifest records: a pin is bpfsup's
// when the manifest records its id, now or in an earlier generation that a
// crash may have left pinned, or, for a link under a name the manifest
// records, when it runs a program the manifest records (a link attached by
// an install that crashed before its manifest was written). Every destructive path (teardown, removal of
// staging debris, removal of pins the configuration no longer has) removes
// only such pins, and says what it left alone.

func hasID(ids []uint32, id uint32) bool { return id != 0 && slices.Contains(ids, id) }

// MapIDs are the ids the manifest records for map name: its own and those
// of the maps it replaced that a crash may have left pinned.
func (m *Manifest) MapIDs(name string) []uint32 {
	if m == nil {
		return nil
	}
	r, ok := m.Maps[name]
	if !ok {
		return nil
	}
	return append([]uint32{r.ID}, r.PreviousIDs...)
}

// ProgramIDs are the ids the manifest records for program name.
func (m *Manifest) ProgramIDs(name string) []uint32 {
	if m == nil {
		return nil
	}
	r, ok := m.Programs[name]
	if !ok {
		return nil
	}
	return append([]uint32{r.ID}, r.PreviousIDs...)
}

// LinkIDs are the ids the manifest records for link name.
func (m *Manifest) LinkIDs(name string) []uint32 {
	if m == nil {
		return nil
	}
	r, ok := m.Links[name]
	if !ok {
		return nil
	}
	return append([]uint32{r.ID}, r.PreviousIDs...)
}

// OwnsProgramID reports whether id is one of the programs the manifest
// records, under any name.
func (m *Manifest) OwnsProgramID(id uint32) bool {
	if m == nil || id == 0 {
		return false
	}
	for _, r := range m.Programs {
		if r.ID == id || slices.Contains(r.PreviousIDs, id) {
			return true
		}
	}
	return false
}

// Owns reports whether the pin of kind and name that holds pi is bpfsup's,
// as the manifest says (see the top of this file). A nil manifest owns
// nothing.
func (m *Manifest) Owns(kind Kind, name string, pi bpffs.PinInfo) bool {
	if m == nil || pi.ID == 0 {
		return false
	}
	switch {
	case kind == Maps && pi.Kind == bpffs.Map:
		return hasID(m.MapIDs(name), pi.ID)
	case kind == Programs && pi.Kind == bpffs.Program:
		return hasID(m.ProgramIDs(name), pi.ID)
	case kind == Links && pi.Kind == bpffs.Link:
		// A link that an install which crashed pinned before its manifest
		// came is under a name the write-ahead manifest records already
		// (every planned link is in it, attached or not): a link pinned
		// under any other name is another tool's, whatever it runs.
		_, named := m.Links[name]
		return hasID(m.LinkIDs(name), pi.ID) || (named && m.OwnsProgramID(pi.Program))
	case kind == Links && pi.Kind == bpffs.Map:
		// The record of a tc filter (hooks: tcx's fallback) stands where a
		// link would, under the id the manifest records for the link.
		return hasID(m.LinkIDs(name), pi.ID)
	}
	return false
}

// OwnsAny reports whether pi, pinned under a name that does not say what it
// was (staging debris), is any map, program or link the manifest records.
func (m *Manifest) OwnsAny(pi bpffs.PinInfo) bool {
	if m == nil || pi.ID == 0 {
		return false
	}
	switch pi.Kind {
	case bpffs.Map:
		for name := range m.Maps {
			if hasID(m.MapIDs(name), pi.ID) {
				return true
			}
		}
		for name := range m.Links {
			if hasID(m.LinkIDs(name), pi.ID) {
				return true // a tc filter's record
			}
		}
	case bpffs.Program:
		return m.OwnsProgramID(pi.ID)
	case bpffs.Link:
		for name := range m.Links {
			if hasID(m.LinkIDs(name), pi.ID) {
				return true
			}
		}
		return m.OwnsProgramID(pi.Program)
	}
	return false
}
