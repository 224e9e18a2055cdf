package e2e

import (
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/bpfsup/bpfsup/hooks"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// PinPath is where bpfsup pins an object's map, program or link under e's
// pin root: kind is "maps", "programs" or "links".
func PinPath(e *testutil.Env, object, kind, name string) string {
	return filepath.Join(e.PinRoot, object, kind, name)
}

// PinnedLinkInfo is the kernel's info of the bpf_link pinned at path. It
// fails the test when path holds no bpf_link (a tc filter's record
// included: see PinnedAttachmentInfo).
func PinnedLinkInfo(tb testing.TB, path string) *link.Info {
	tb.Helper()
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		tb.Fatalf("load pinned link: %v", err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		tb.Fatalf("info of the link pinned at %s: %v", path, err)
	}
	return info
}

// PinnedAttachmentInfo is the info of what is pinned at path where a link
// belongs, as bpfsup itself loads it (hooks.LoadPinned): a bpf_link's, or,
// for the record of a tc filter that stands in for one (tcx's tc
// fallback), the record's id as the link id and the filter's program.
// Unlike PinnedLinkInfo it returns its error, for a link that may not be
// there.
func PinnedAttachmentInfo(path string) (*link.Info, error) {
	a, err := hooks.LoadPinned(path)
	if err != nil {
		return nil, err
	}
	defer a.Close()
	info, err := a.Info()
	if err != nil {
		return nil, err
	}
	if info.Link != nil {
		return info.Link, nil
	}
	return &link.Info{ID: link.ID(info.ID), Program: info.Program}, nil
}

// PinnedMapID is the id of the map pinned at path.
func PinnedMapID(tb testing.TB, path string) ebpf.MapID {
	tb.Helper()
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		tb.Fatalf("load pinned map: %v", err)
	}
	defer m.Close()
	return MapID(tb, m)
}

// PinnedProgramID is the id of the program pinned at path.
func PinnedProgramID(tb testing.TB, path string) ebpf.ProgramID {
	tb.Helper()
	p, err := ebpf.LoadPinnedProgram(path, nil)
	if err != nil {
		tb.Fatalf("load pinned program: %v", err)
	}
	defer p.Close()
	return ProgramID(tb, p)
}

// MapID is m's id in the kernel.
func MapID(tb testing.TB, m *ebpf.Map) ebpf.MapID {
	tb.Helper()
	info, err := m.Info()
	if err != nil {
		tb.Fatalf("map info: %v", err)
	}
	id, _ := info.ID()
	return id
}

// ProgramID is p's id in the kernel.
func ProgramID(tb testing.TB, p *ebpf.Program) ebpf.ProgramID {
	tb.Helper()
	info, err := p.Info()
	if err != nil {
		tb.Fatalf("program info: %v", err)
	}
	id, _ := info.ID()
	return id
}

// ProgramInfo is the kernel's info of the program with id.
func ProgramInfo(tb testing.TB, id ebpf.ProgramID) *ebpf.ProgramInfo {
	tb.Helper()
	p, err := ebpf.NewProgramFromID(id)
	if err != nil {
		tb.Fatalf("program %d: %v", id, err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		tb.Fatalf("info of program %d: %v", id, err)
	}
	return info
}

// LinkGone reports whether no link has id any more.
func LinkGone(id link.ID) bool {
	return gone(link.NewFromID(id))
}

// ProgramGone reports whether no program has id any more: nothing holds it,
// so it is attached nowhere.
func ProgramGone(id ebpf.ProgramID) bool {
	return gone(ebpf.NewProgramFromID(id))
}

// MapGone reports whether no map has id any more.
func MapGone(id ebpf.MapID) bool {
	return gone(ebpf.NewMapFromID(id))
}

// gone reports whether opening a kernel object by id found nothing; it
// closes what it did find. Any other error (EPERM, say) is not taken for
// the object's absence.
func gone[T interface{ Close() error }](obj T, err error) bool {
	if err == nil {
		obj.Close()
		return false
	}
	return errors.Is(err, os.ErrNotExist)
}

// LookupPinned looks key up in the map pinned at path into value. It fails
// the test when the map or the key is not there.
func LookupPinned(tb testing.TB, path string, key, value any) {
	tb.Helper()
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		tb.Fatalf("load pinned map: %v", err)
	}
	defer m.Close()
	if err := m.Lookup(key, value); err != nil {
		tb.Fatalf("look up %v in %s: %v", key, path, err)
	}
}

// PutPinned puts key and value into the map pinned at path.
func PutPinned(tb testing.TB, path string, key, value any) {
	tb.Helper()
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		tb.Fatalf("load pinned map: %v", err)
	}
	defer m.Close()
	if err := m.Put(key, value); err != nil {
		tb.Fatalf("put %v into %s: %v", key, path, err)
	}
}

// IfIndex is the index of the network interface named name in the calling
// thread's network namespace (inside Netns.Do for another one).
func IfIndex(name string) (int, error) {
	iface, err := net.InterfaceByName(name)
	if err != nil {
		return 0, err
	}
	return iface.Index, nil
}

// IPLinkXDP is the id of the XDP program that iproute2 (`ip -j link show`)
// shows on ifname in ns, 0 when there is none: the kernel's view of the
// hook, through another tool than bpfsup.
func IPLinkXDP(tb testing.TB, ns *testutil.Netns, ifname string) uint32 {
	tb.Helper()
	out, err := output(exec.Command("ip", "-n", ns.Name, "-j", "link", "show", "dev", ifname))
	if err != nil {
		tb.Fatalf("ip link show %s in %s: %v", ifname, ns.Name, err)
	}
	var links []struct {
		XDP *struct {
			Prog struct {
				ID uint32 `json:"id"`
			} `json:"prog"`
		} `json:"xdp"`
	}
	if err := json.Unmarshal(out, &links); err != nil || len(links) != 1 {
		tb.Fatalf("ip -j link show %s: %v\n%s", ifname, err, out)
	}
	if links[0].XDP == nil {
		return 0
	}
	return links[0].XDP.Prog.ID
}
