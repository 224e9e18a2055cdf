package pinstore

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

func progID(tb testing.TB, p *ebpf.Program) ebpf.ProgramID {
	tb.Helper()
	info, err := p.Info()
	if err != nil {
		tb.Fatal(err)
	}
	id, ok := info.ID()
	if !ok {
		tb.Fatal("program info has no id")
	}
	return id
}

// mustObjectMaps adopts or creates every map of spec and pins the new ones,
// as an install does; the maps are closed at the end of the test.
func mustObjectMaps(tb testing.TB, o *Object, spec *ebpf.CollectionSpec) map[string]*ebpf.Map {
	tb.Helper()
	maps := make(map[string]*ebpf.Map)
	for name, ms := range spec.Maps {
		if IsInternalMap(name) {
			continue
		}
		r := mustAdoptOrCreate(tb, o, name, ms, MapPolicy{})
		if !r.Adopted {
			if err := o.Pin(Maps, r.Path, r.Map); err != nil {
				tb.Fatal(err)
			}
		}
		maps[name] = r.Map
	}
	return maps
}

// mustPrograms runs AdoptOrLoadPrograms and closes every program at the end
// of the test.
func mustPrograms(tb testing.TB, o *Object, spec *ebpf.CollectionSpec, maps map[string]*ebpf.Map) map[string]*ProgramResult {
	tb.Helper()
	res, err := o.AdoptOrLoadPrograms(spec, maps, ebpf.ProgramOptions{}, Adoption{})
	if err != nil {
		tb.Fatalf("adopt or load programs: %v", err)
	}
	tb.Cleanup(func() {
		for _, r := range res {
			r.close()
		}
	})
	return res
}

func TestProgramNames(t *testing.T) {
	spec := mustSpec(t, "dropfilter")
	if got := ProgramNames(spec); !slices.Equal(got, []string{"tc_drop", "xdp_drop"}) {
		t.Fatalf("ProgramNames = %v", got)
	}
}

func TestAdoptOrLoadPrograms(t *testing.T) {
	s := mustStore(t)
	o := mustOpen(t, s, "fw")
	v1 := mustSpec(t, "dropfilter")
	maps := mustObjectMaps(t, o, v1)
	names := []string{"tc_drop", "xdp_drop"}

	// First start: everything is loaded, nothing pinned yet.
	first := mustPrograms(t, o, v1, maps)
	ids := map[string]ebpf.ProgramID{}
	for _, name := range names {
		r := first[name]
		if r == nil || r.Adopted || r.Pinned != nil || r.Mismatch != "" || r.Path != o.Path(Programs, name) {
			t.Fatalf("first load of %s: %+v", name, r)
		}
		if Exists(r.Path) {
			t.Fatalf("AdoptOrLoadPrograms pinned %s", name)
		}
		if err := o.Pin(Programs, r.Path, r.Program); err != nil {
			t.Fatal(err)
		}
		ids[name] = progID(t, r.Program)
	}

	// Restart with the same object and maps: the pinned programs are
	// adopted. Loading would have made new ones with new ids.
	again := mustPrograms(t, o, v1, maps)
	for _, name := range names {
		r := again[name]
		if !r.Adopted || r.Pinned != nil || r.Mismatch != "" || progID(t, r.Program) != ids[name] {
			t.Fatalf("restart: %s: %+v, id %d, want the pinned %d", name, r, progID(t, r.Program), ids[name])
		}
	}

	// An upgrade: other instructions, same maps. The new programs are
	// loaded; the pinned ones are handed back for the swap.
	v2 := mustSpec(t, "dropfilter_v2")
	upgrade := mustPrograms(t, o, v2, maps)
	for _, name := range names {
		r := upgrade[name]
		if r.Adopted || r.Pinned == nil || progID(t, r.Pinned) != ids[name] || progID(t, r.Program) == ids[name] {
			t.Fatalf("upgrade: %s: %+v", name, r)
		}
		if !strings.Contains(r.Mismatch, "tag") {
			t.Errorf("upgrade: %s: mismatch %q does not mention the tag", name, r.Mismatch)
		}
	}

	// A map replaced (reset): the pinned programs still use the old one, so
	// they are reloaded with the new map.
	fresh, err := ebpf.NewMap(v1.Maps["drop_ports"])
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	replaced := map[string]*ebpf.Map{"drop_ports": fresh, "drop_count": maps["drop_count"]}
	reload := mustPrograms(t, o, v1, replaced)
	for _, name := range names {
		r := reload[name]
		if r.Adopted || r.Pinned == nil || !strings.Contains(r.Mismatch, "other maps") {
			t.Fatalf("map replaced: %s: %+v", name, r)
		}
		info, err := r.Program.Info()
		if err != nil {
			t.Fatal(err)
		}
		used, _ := info.MapIDs()
		if !slices.Contains(used, mapID(t, fresh)) || slices.Contains(used, mapID(t, maps["drop_ports"])) {
			t.Errorf("reloaded %s uses maps %v, want the new drop_ports %d", name, used, mapID(t, fresh))
		}
	}
}

// A pin holding a program of another type is never adopted.
func TestAdoptOrLoadProgramsTypeMismatch(t *testing.T) {
	s := mustStore(t)
	o := mustOpen(t, s, "fw")
	spec := mustSpec(t, "dropfilter")
	maps := mustObjectMaps(t, o, spec)
	first := mustPrograms(t, o, spec, maps)
	// The tc program pinned where the XDP program belongs.
	if err := o.Pin(Programs, o.Path(Programs, "xdp_drop"), first["tc_drop"].Program); err != nil {
		t.Fatal(err)
	}
	res := mustPrograms(t, o, spec, maps)
	r := res["xdp_drop"]
	if r.Adopted || r.Pinned == nil || !strings.Contains(r.Mismatch, "type SchedCLS") || r.Program.Type() != ebpf.XDP {
		t.Fatalf("%+v", r)
	}
}

func TestVerifierLog(t *testing.T) {
	s := mustStore(t)
	o := mustOpen(t, s, "bad")
	spec := mustSpec(t, "bad_verifier")
	res, err := o.AdoptOrLoadPrograms(spec, nil, ebpf.ProgramOptions{}, Adoption{})
	if err == nil {
		for _, r := range res {
			r.close()
		}
		t.Fatal("the verifier accepted bad_verifier")
	}
	if !strings.Contains(err.Error(), "load object bad") {
		t.Errorf("error %q does not name the object", err)
	}
	var ve *ebpf.VerifierError
	if !errors.As(err, &ve) {
		t.Fatalf("error %v is not a verifier error", err)
	}
	log := VerifierLog(err, 3)
	lines := strings.Split(log, "\n")
	if log == "" || len(lines) > 3 {
		t.Fatalf("VerifierLog(err, 3) = %q", log)
	}
	// The tail of the log says why: a packet access out of bounds.
	if !strings.Contains(VerifierLog(err, 1000), "invalid access to packet") {
		t.Errorf("verifier log does not say why:\n%s", VerifierLog(err, 1000))
	}
	if got := lines[len(lines)-1]; got != ve.Log[len(ve.Log)-1] {
		t.Errorf("last line %q, want the log's last line %q", got, ve.Log[len(ve.Log)-1])
	}
	if VerifierLog(errors.New("not the verifier"), 3) != "" {
		t.Error("VerifierLog of another error is not empty")
	}
	if pins, _ := o.Pins(Programs); len(pins) != 0 {
		t.Fatalf("a refused program was pinned: %v", pins)
	}
}

// A program's digest follows its object file and, for a program that reads
// global data, the data's initial values with the variables as set; a
// program that reads none has no data digest.
func TestDigestPrograms(t *testing.T) {
	load := func(name string) *ebpf.CollectionSpec {
		t.Helper()
		spec, err := ebpf.LoadCollectionSpec(testutil.BPFObject(name))
		if err != nil {
			t.Fatal(err)
		}
		return spec
	}
	spec := load("globals")
	a := DigestPrograms(spec, "sha-a")["on_getppid"]
	if a.Source == "" || a.Data == "" {
		t.Fatalf("digest %+v, want a source and a data digest", a)
	}
	if b := DigestPrograms(load("globals"), "sha-a")["on_getppid"]; b != a {
		t.Fatalf("the same object digests differently: %+v, %+v", a, b)
	}
	if b := DigestPrograms(spec, "sha-b")["on_getppid"]; b.Source == a.Source || b.Data != a.Data {
		t.Fatalf("another object file: %+v, was %+v; want another source, the same data", b, a)
	}
	if err := spec.Variables["step"].Set(uint64(7)); err != nil {
		t.Fatal(err)
	}
	if b := DigestPrograms(spec, "sha-a")["on_getppid"]; b.Source != a.Source || b.Data == a.Data {
		t.Fatalf("step set to 7: %+v, was %+v; want the same source, other data", b, a)
	}
	if d := DigestPrograms(load("counter"), "sha-a")["count_packets"]; d.Data != "" {
		t.Fatalf("count_packets reads no global data, yet has data digest %q", d.Data)
	}
}
