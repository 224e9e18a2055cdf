package pinstore

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/crash"
)

// ProgramResult is one reconciled program.
type ProgramResult struct {
	// Program is owned by the caller.
	Program *ebpf.Program
	// Path is the program's pin path.
	Path string
	// Adopted is true when Program is the pinned program, taken over without
	// running the verifier; false when it was loaded and must still be pinned.
	Adopted bool
	// Pinned is the program that is pinned at Path now, when it was not
	// adopted: nil when nothing is pinned there. Owned by the caller.
	Pinned *ebpf.Program
	// Mismatch says why a pinned program was not adopted.
	Mismatch string
	// Brief is the adopted program's id, tag and maps (zero when loaded).
	Brief ProgramBrief
}

// ProgramNames lists the programs of spec that bpfsup manages: every program
// whose type is known, sorted by name.
func ProgramNames(spec *ebpf.CollectionSpec) []string {
	var names []string
	for name, p := range spec.Programs {
		if p.Type != ebpf.UnspecifiedProgram {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

// AdoptOrLoadPrograms reconciles every program of spec with its pin. A pinned
// program is adopted without loading when its instructions match the spec
// (ProgramSpec.Compatible, which knows the kernel's tag) and it uses exactly
// the maps given in maps; every other program is loaded, with maps standing in
// for the object's maps. Nothing is pinned here. On error every program is
// closed; the verifier's log is in the error (see VerifierLog).
//
// adopt says what else is known of the pinned programs (see Adoption).
func (o *Object) AdoptOrLoadPrograms(spec *ebpf.CollectionSpec, maps map[string]*ebpf.Map, opts ebpf.ProgramOptions, adopt Adoption) (_ map[string]*ProgramResult, err error) {
	names := ProgramNames(spec)
	for _, name := range names {
		if err := CheckName("program", name); err != nil {
			return nil, err
		}
	}

	results := make(map[string]*ProgramResult, len(names))
	defer func() {
		if err != nil {
			for _, r := range results {
				r.close()
			}
		}
	}()

	ids := make(map[ebpf.MapID]bool, len(maps))
	for _, m := range maps {
		id, err := MapID(m)
		if err != nil {
			return nil, err
		}
		ids[id] = true
	}

	var toLoad []string
	for _, name := range names {
		r := &ProgramResult{Path: o.Path(Programs, name)}
		results[name] = r
		var pinned *ebpf.Program
		if adopt.Opened != nil {
			pinned = adopt.Opened(r.Path)
		}
		if pinned == nil {
			p, err := ebpf.LoadPinnedProgram(r.Path, nil)
			if errors.Is(err, os.ErrNotExist) {
				toLoad = append(toLoad, name)
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("load pinned program %s from %s: %w", name, r.Path, err)
			}
			pinned = p
		}
		brief, mismatch, err := programMismatch(spec.Programs[name], pinned, ids, adopt.Want[name], adopt.Recorded, name)
		if err != nil {
			pinned.Close()
			return nil, fmt.Errorf("program %s pinned at %s: %w", name, r.Path, err)
		}
		if mismatch == "" {
			r.Program, r.Adopted, r.Brief = pinned, true, brief
			continue
		}
		r.Pinned, r.Mismatch = pinned, mismatch
		toLoad = append(toLoad, name)
	}
	if len(toLoad) == 0 {
		return results, nil
	}

	cs := spec.Copy()
	for name := range cs.Programs {
		if !contains(toLoad, name) {
			delete(cs.Programs, name)
		}
	}
	for name, ms := range cs.Maps {
		// The loader would fill the slots of replaced maps itself, live
		// and before the install's gate, and load programs for them that
		// are adopted.
		ms = WithoutReferences(ms)
		ms.Pinning = ebpf.PinNone
		cs.Maps[name] = ms
	}
	replacements := make(map[string]*ebpf.Map, len(maps))
	for name, m := range maps {
		if _, ok := cs.Maps[name]; ok {
			replacements[name] = m
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(cs, ebpf.CollectionOptions{
		Programs:        opts,
		MapReplacements: replacements,
	})
	if err != nil {
		return nil, fmt.Errorf("load object %s: %w", o.Name, err)
	}
	defer coll.Close()
	for _, name := range toLoad {
		results[name].Program = coll.DetachProgram(name)
		crash.At("programs/loaded")
	}
	return results, nil
}

func (r *ProgramResult) close() {
	if r.Program != nil {
		r.Program.Close()
	}
	if r.Pinned != nil {
		r.Pinned.Close()
	}
}

// Adoption is what AdoptOrLoadPrograms knows of the pinned programs besides
// their pins. Every field may be left empty.
type Adoption struct {
	// Opened hands over a program the caller already opened from the pin at
	// path (the call then owns it), or nil to open the pin here.
	Opened func(path string) *ebpf.Program
	// Want is each program's digest in this object (DigestPrograms).
	Want map[string]ProgramDigest
	// Recorded is the manifest's record of each program, written by the
	// install that pinned it.
	Recorded map[string]ProgramRecord
}

// ProgramDigest is what a program's loaded form depends on besides the
// instructions whose tag the kernel reports.
//
//   - Source names the object file and the program. Loading rewrites some
//     instructions (CO-RE relocations against the running kernel's BTF,
//     .kconfig values), so the kernel's tag of a CO-RE program is not that of
//     the ELF's instructions, and cannot be compared. But the same program of
//     the same file loads into the same kernel the same way, and pins do not
//     outlive the kernel: a pinned program recorded with this Source and
//     still holding its recorded id and tag is what a load would make.
//   - Data digests the initial contents of the global-data maps (.rodata,
//     .data, .bss) the program reads: the ELF's bytes and the configuration's
//     variables. Those maps belong to one load of the program, so a pinned
//     program whose variables differ (variables = { ... } changed) must be
//     loaded anew even though its instructions are the same. "" when it
//     reads none.
//   - Target is what the kernel binds the program to at load time (fentry,
//     tp_btf, lsm: the attach type and function or tracepoint, as the
//     hooks set them), which its tag does not cover either: a program
//     whose configured target moved is loaded anew for the new one. ""
//     for programs bound to nothing at load.
type ProgramDigest struct {
	Source string
	Data   string
	Target string
}

// DigestPrograms digests every program of spec, an object whose file has
// hash objectSHA, with its variables as set.
func DigestPrograms(spec *ebpf.CollectionSpec, objectSHA string) map[string]ProgramDigest {
	out := make(map[string]ProgramDigest, len(spec.Programs))
	for name, ps := range spec.Programs {
		src := sha256.Sum256([]byte(objectSHA + "\x00" + name))
		d := ProgramDigest{Source: hex.EncodeToString(src[:])}
		if ps.AttachTo != "" {
			d.Target = ps.AttachType.String() + ":" + ps.AttachTo
		}
		var data []string
		for _, ins := range ps.Instructions {
			if ref := ins.Reference(); ins.IsLoadFromMap() && IsInternalMap(ref) && !slices.Contains(data, ref) {
				data = append(data, ref)
			}
		}
		if len(data) > 0 {
			sort.Strings(data)
			h := sha256.New()
			for _, mname := range data {
				fmt.Fprintf(h, "map %q\n", mname)
				if ms := spec.Maps[mname]; ms != nil {
					for _, kv := range ms.Contents {
						if b, ok := kv.Value.([]byte); ok {
							fmt.Fprintf(h, "contents %d %x\n", len(b), b)
						}
					}
				}
				var vars []string
				for vname, v := range spec.Variables {
					if v.SectionName == mname {
						vars = append(vars, vname)
					}
				}
				sort.Strings(vars)
				for _, vname := range vars {
					v := spec.Variables[vname]
					fmt.Fprintf(h, "variable %q at %d = %x\n", vname, v.Offset, v.Value)
				}
			}
			d.Data = hex.EncodeToString(h.Sum(nil))
		}
		out[name] = d
	}
	return out
}

// programMismatch says why pinned is not the program name of ps using maps
// ids, or "" when it is, with pinned's brief. want is its digest in the
// object, recorded what the manifest says of the pinned programs.
func programMismatch(ps *ebpf.ProgramSpec, pinned *ebpf.Program, ids map[ebpf.MapID]bool, want ProgramDigest, recorded map[string]ProgramRecord, name string) (ProgramBrief, string, error) {
	info, err := BriefProgram(pinned)
	if err != nil {
		return info, "", err
	}
	if pinned.Type() != ps.Type {
		return info, fmt.Sprintf("type %s, the object's is %s", pinned.Type(), ps.Type), nil
	}
	rec, ok := recorded[name]
	// The manifest speaks for this very program only while the pin holds
	// the program it recorded.
	ok = ok && rec.ID == uint32(info.ID) && rec.Tag == info.Tag
	// ProgramSpec.Compatible, without asking the kernel again for the tag.
	same, err := ps.Instructions.HasTag(info.Tag, HostEndian())
	if err != nil {
		return info, "", err
	}
	if !same && !(ok && want.Source != "" && rec.Source == want.Source) {
		return info, fmt.Sprintf("tag %s differs from the object's instructions", info.Tag), nil
	}
	if want.Target != "" && !(ok && rec.Target == want.Target) {
		return info, fmt.Sprintf("it was loaded for another target than %s", want.Target), nil
	}
	if want.Data != "" && !(ok && rec.Data == want.Data) {
		return info, "its global data (.rodata, .data, .bss: the object's initial values and the configuration's variables) is not the object's", nil
	}
	// The program must use the maps bpfsup holds, not an older, replaced map
	// of the same name. Maps the compiler made (.rodata, .bss) are its own.
	uses := referencedMaps(ps)
	have := 0
	for _, id := range info.MapIDs {
		if ids[id] {
			have++
		}
	}
	if have != len(uses) {
		return info, fmt.Sprintf("it uses other maps than the pinned ones (%d of %d match)", have, len(uses)), nil
	}
	return info, "", nil
}

// ProgramMismatch says why AdoptOrLoadPrograms would not adopt pinned as
// program name of spec, with the maps of ids, or "" when it would.
func ProgramMismatch(spec *ebpf.CollectionSpec, name string, pinned *ebpf.Program, ids map[ebpf.MapID]bool, adopt Adoption) (string, error) {
	_, mismatch, err := programMismatch(spec.Programs[name], pinned, ids, adopt.Want[name], adopt.Recorded, name)
	return mismatch, err
}

func referencedMaps(ps *ebpf.ProgramSpec) map[string]bool {
	refs := make(map[string]bool)
	for _, ins := range ps.Instructions {
		if ins.IsLoadFromMap() && ins.Reference() != "" && !IsInternalMap(ins.Reference()) {
			refs[ins.Reference()] = true
		}
	}
	return refs
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// VerifierLog returns the last n lines of the verifier's log when err is the
// verifier refusing a program, and "" otherwise.
func VerifierLog(err error, n int) string {
	var ve *ebpf.VerifierError
	if !errors.As(err, &ve) || len(ve.Log) == 0 {
		return ""
	}
	if errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) || errors.Is(err, unix.ENOMEM) {
		return "" // not the verifier's verdict: the kernel's log says nothing of it
	}
	lines := ve.Log
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// HostEndian is this machine's byte order as the one of binary.LittleEndian
// and binary.BigEndian it is: cilium/ebpf's instruction encoding knows only
// those two, not binary.NativeEndian.
func HostEndian() binary.ByteOrder {
	if binary.NativeEndian.Uint16([]byte{1, 0}) == 1 {
		return binary.LittleEndian
	}
	return binary.BigEndian
}
