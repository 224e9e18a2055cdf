package converge

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfsup/bpfsup/config"
	"github.com/bpfsup/bpfsup/hooks"
	"github.com/bpfsup/bpfsup/internal/bpffs"
	"github.com/bpfsup/bpfsup/pinstore"
)

// Check is `bpfsup check`: what a start or a reload would decide for each
// object, found without pinning, attaching or locking anything. The plan
// is the install's (PlanObject); every program goes through the verifier
// of this kernel on maps made for the purpose and closed after; the hooks'
// targets are looked up; and where the object is pinned already, the map
// and program decisions are pinstore's (DecideMap, ProgramMismatch) and the
// foreign pins ownership.go's, as an install would take them.
type Check struct {
	// OK says that a start or reload would succeed: no object has an error.
	OK      bool          `json:"ok"`
	Objects []ObjectCheck `json:"objects"`
}

// ObjectCheck is one object's check.
type ObjectCheck struct {
	Name string `json:"name"`
	Path string `json:"path"`
	// SHA256 is the object file's digest, and Signer who signed it, when
	// the configuration asks for a signature.
	SHA256 string `json:"sha256,omitempty"`
	Signer string `json:"signer,omitempty"`
	// Pinned says that the object has pins under the pin root: Maps,
	// Programs' Reload and Links' Reload say what a reload would do.
	Pinned   bool           `json:"pinned"`
	Programs []ProgramCheck `json:"programs"`
	Maps     []MapCheck     `json:"maps"`
	Links    []LinkCheck    `json:"links"`
	// Errors are why a start or reload of the object would fail.
	Errors []string `json:"errors"`
	OK     bool     `json:"ok"`
}

// ProgramCheck is one program through the verifier.
type ProgramCheck struct {
	Name string `json:"name"`
	Type string `json:"type"`
	// Instructions in the ELF file.
	Instructions int `json:"instructions"`
	// Verified says that the verifier took it; InsnsProcessed and
	// VerifyMicros are what it says it did ("processed N insns",
	// "verification time N usec"), XlatedBytes and JitedBytes the sizes of
	// the program it made.
	Verified       bool   `json:"verified"`
	InsnsProcessed int    `json:"insns_processed,omitempty"`
	VerifyMicros   int64  `json:"verify_us,omitempty"`
	XlatedBytes    uint32 `json:"xlated_bytes,omitempty"`
	JitedBytes     uint32 `json:"jited_bytes,omitempty"`
	// LoadMicros is the wall time of the load, the verifier's and the rest.
	LoadMicros int64 `json:"load_us"`
	// Error and VerifierLog (its last lines) say why it was refused.
	Error       string   `json:"error,omitempty"`
	VerifierLog []string `json:"verifier_log,omitempty"`
	// Reload is what a reload would do with the pinned program: "adopt"
	// or "load"; Why says why it would load it anew.
	Reload string `json:"reload,omitempty"`
	Why    string `json:"why,omitempty"`
}

// MapCheck is what a start or reload would do with a map: create, adopt,
// reset, migrate, refuse, replace-foreign (pinstore.MapAction).
type MapCheck struct {
	Name   string `json:"name"`
	Path   string `json:"path"`
	Action string `json:"action"`
	Why    string `json:"why,omitempty"`
}

// LinkCheck is one attachment: its hook resolved, its target there, and
// what a reload would do with its pinned link: "attach" (none pinned),
// "keep", "update-in-place", "make-before-break", "keep-defunct".
type LinkCheck struct {
	Name      string `json:"name"`
	Program   string `json:"program"`
	Hook      string `json:"hook"`
	Netns     string `json:"netns,omitempty"`
	Mechanism string `json:"mechanism"`
	Caveat    string `json:"caveat,omitempty"`
	Error     string `json:"error,omitempty"`
	Reload    string `json:"reload,omitempty"`
}

// CheckObjects checks every object of cfgs against the pins of store.
func CheckObjects(store pinstore.Store, cfgs []config.Object, opts PlanOptions) *Check {
	c := &Check{OK: true}
	names := map[string]string{}
	for _, cfg := range cfgs {
		oc := checkObject(store, cfg, opts)
		if prev, ok := names[oc.Name]; ok {
			oc.Errors = append(oc.Errors, fmt.Sprintf("objects %s and %s are both named %q; give one a name", prev, cfg.Path, oc.Name))
		}
		names[oc.Name] = cfg.Path
		oc.OK = len(oc.Errors) == 0
		c.OK = c.OK && oc.OK
		c.Objects = append(c.Objects, oc)
	}
	return c
}

func checkObject(store pinstore.Store, cfg config.Object, opts PlanOptions) ObjectCheck {
	oc := ObjectCheck{Name: ObjectName(cfg), Path: cfg.Path, Programs: []ProgramCheck{}, Maps: []MapCheck{}, Links: []LinkCheck{}, Errors: []string{}}
	f, err := readObject(cfg)
	if err != nil {
		oc.Errors = append(oc.Errors, err.Error())
		return oc
	}
	oc.SHA256, oc.Signer = f.digest(), f.signer
	p, err := planObjectData(cfg, f, opts)
	if err != nil {
		oc.Errors = append(oc.Errors, err.Error())
		return oc
	}
	oc.Name = p.name
	oc.Programs = verifyPrograms(p)
	for _, pc := range oc.Programs {
		if !pc.Verified && strings.HasPrefix(pc.Error, "program "+pc.Name+":") {
			oc.Errors = append(oc.Errors, pc.Error)
		} else if !pc.Verified {
			oc.Errors = append(oc.Errors, fmt.Sprintf("program %s: %s", pc.Name, pc.Error))
		}
	}
	_, err = os.Stat(store.ObjectDir(p.name))
	oc.Pinned = err == nil
	obj := store.Peek(p.name)
	oc.Links = checkLinks(store, p)
	if oc.Pinned {
		previewReload(obj, p, &oc)
	}
	for _, lc := range oc.Links {
		if lc.Error != "" {
			oc.Errors = append(oc.Errors, fmt.Sprintf("link %s: %s", lc.Name, lc.Error))
		}
	}
	return oc
}

// verifyPrograms loads each program of p on its own, on maps made for the
// check, with the verifier's statistics, and closes everything again.
func verifyPrograms(p *Plan) []ProgramCheck {
	cs := p.spec.Copy()
	maps := map[string]*ebpf.Map{}
	defer func() {
		for _, m := range maps {
			m.Close()
		}
	}()
	var mapErr error
	for name, ms := range cs.Maps {
		ms = pinstore.WithoutReferences(ms)
		ms.Pinning = ebpf.PinNone
		cs.Maps[name] = ms
		if pinstore.IsInternalMap(name) {
			continue // made with each load, from its contents
		}
		m, err := ebpf.NewMap(ms)
		if err != nil {
			mapErr = errors.Join(mapErr, fmt.Errorf("create map %s: %w", name, err))
			continue
		}
		maps[name] = m
	}
	var out []ProgramCheck
	for _, name := range p.progList {
		ps := cs.Programs[name]
		pc := ProgramCheck{Name: name, Type: ps.Type.String(), Instructions: len(ps.Instructions)}
		if mapErr != nil {
			pc.Error = mapErr.Error()
		} else {
			verifyProgram(cs, name, maps, &pc)
		}
		out = append(out, pc)
	}
	return out
}

// verifyProgram loads program name of cs alone, with maps for its maps.
func verifyProgram(cs *ebpf.CollectionSpec, name string, maps map[string]*ebpf.Map, pc *ProgramCheck) {
	one := &ebpf.CollectionSpec{Maps: cs.Maps, Programs: map[string]*ebpf.ProgramSpec{name: cs.Programs[name]},
		Types: cs.Types, ByteOrder: cs.ByteOrder}
	load := func(level ebpf.LogLevel) (*ebpf.Collection, error) {
		return ebpf.NewCollectionWithOptions(one, ebpf.CollectionOptions{
			Programs: ebpf.ProgramOptions{LogLevel: level}, MapReplacements: maps})
	}
	start := time.Now()
	coll, err := load(ebpf.LogLevelStats)
	pc.LoadMicros = time.Since(start).Microseconds()
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			// Again for the verifier's reasons: with statistics only, the
			// log has none.
			if _, again := load(0); again != nil {
				err = again
			}
		}
		pc.Error = err.Error()
		if vlog := pinstore.VerifierLog(err, 20); vlog != "" {
			pc.VerifierLog = splitLines(vlog)
		}
		return
	}
	defer coll.Close()
	prog := coll.Programs[name]
	pc.Verified = true
	if n, ok := statNumber(prog.VerifierLog, "processed ", " insns"); ok {
		pc.InsnsProcessed = int(n)
	}
	if n, ok := statNumber(prog.VerifierLog, "verification time ", " usec"); ok {
		pc.VerifyMicros = n
	}
	if f, err := bpffs.ProgInfo(prog.FD(), false); err == nil {
		pc.XlatedBytes, pc.JitedBytes = f.XlatedLen, f.JitedLen
	}
}

// statNumber is the number between before and after in the verifier's
// statistics ("processed 12 insns (limit 1000000) ...", "verification time
// 34 usec"): the first place where before is followed by digits and then
// after. Parsed by hand rather than with package-level regexps, whose
// compilation every start of bpfsup would pay for a command few run.
func statNumber(log, before, after string) (int64, bool) {
	for {
		i := strings.Index(log, before)
		if i < 0 {
			return 0, false
		}
		log = log[i+len(before):]
		digits := len(log) - len(strings.TrimLeft(log, "0123456789"))
		if digits > 0 && strings.HasPrefix(log[digits:], after) {
			n, err := strconv.ParseInt(log[:digits], 10, 64)
			return n, err == nil
		}
	}
}

func splitLines(s string) []string {
	var out []string
	for len(s) > 0 {
		i := 0
		for i < len(s) && s[i] != '\n' {
			i++
		}
		out = append(out, s[:i])
		if i < len(s) {
			i++
		}
		s = s[i:]
	}
	return out
}

// checkLinks resolves every attachment of p: its hook (the plan made it),
// and its target, as Precheck does for a start.
func checkLinks(store pinstore.Store, p *Plan) []LinkCheck {
	out := []LinkCheck{}
	for _, pl := range p.links {
		spec := pl.hook.Spec()
		lc := LinkCheck{Name: pl.name, Program: pl.program, Hook: spec.String(), Netns: spec.Netns,
			Mechanism: pl.hook.Mechanism(), Caveat: hooks.Caveat(pl.hook)}
		err := p.precheckLink(store, pl)
		if err == nil && !spec.IsNetwork() && !pinstore.Exists(store.Peek(p.name).Path(pinstore.Links, pl.name)) {
			// A start finds a missing cgroup when it attaches; say it now.
			err = hooks.CheckTarget(spec)
		}
		if err != nil {
			lc.Error = err.Error()
		}
		out = append(out, lc)
	}
	return out
}

// previewReload says what a reload would do with the object's pins: the
// foreign pins it would refuse (ownership.go), each map (DecideMap), each
// program (ProgramMismatch), each link.
func previewReload(obj *pinstore.Object, p *Plan, oc *ObjectCheck) {
	man, err := obj.Store().ReadManifest(p.name)
	if err != nil {
		oc.Errors = append(oc.Errors, fmt.Sprintf("manifest: %v", err))
		man = nil
	}
	pins := newPins()
	defer pins.close()
	pins.manifest, pins.manifestRead = man, true
	own := ownedBy(man)
	foreign, resetMaps, err := checkPinsBefore(obj, p, own, pins)
	if err != nil {
		oc.Errors = append(oc.Errors, err.Error())
		return
	}
	if len(foreign) > 0 && !p.force {
		oc.Errors = append(oc.Errors, foreignError(p.name, foreign).Error())
	}
	ids := previewMaps(obj, p, resetMaps, oc)
	progIDs := previewPrograms(obj, p, man, ids, oc)
	previewLinks(obj, p, man, progIDs, oc)
}

// previewMaps fills oc.Maps; it returns the ids of the maps a reload would
// adopt.
func previewMaps(obj *pinstore.Object, p *Plan, foreign map[string]bool, oc *ObjectCheck) map[ebpf.MapID]bool {
	ids := map[ebpf.MapID]bool{}
	for _, name := range p.maps {
		mc := p.mapCfg[name]
		pol := pinstore.MapPolicy{PinPath: mc.PinPath, Reset: mc.Reset, Migrate: string(mc.Migrate), Foreign: foreign[name]}
		path := obj.MapPath(name, pol)
		c := MapCheck{Name: name, Path: path}
		pinned, err := ebpf.LoadPinnedMap(path, nil)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			c.Action, c.Why = string(pinstore.MapRefuse), err.Error()
			oc.Errors = append(oc.Errors, fmt.Sprintf("map %s: %v", name, err))
			oc.Maps = append(oc.Maps, c)
			continue
		}
		action, incompat := pinstore.DecideMap(p.spec.Maps[name], pinned, pol)
		c.Action = string(action)
		if incompat != nil {
			c.Why = incompat.Error()
		}
		switch action {
		case pinstore.MapAdopt:
			if id, err := pinstore.MapID(pinned); err == nil {
				ids[id] = true
			}
		case pinstore.MapRefuse:
			oc.Errors = append(oc.Errors, fmt.Sprintf("map %s pinned at %s is incompatible with the object (%s); set reset = true or migrate = \"copy\" for this map to replace it",
				name, path, c.Why))
		}
		if pinned != nil {
			pinned.Close()
		}
		oc.Maps = append(oc.Maps, c)
	}
	return ids
}

// previewPrograms sets each program's Reload; it returns the ids of the
// pinned programs a reload would adopt, by name.
func previewPrograms(obj *pinstore.Object, p *Plan, man *pinstore.Manifest, ids map[ebpf.MapID]bool, oc *ObjectCheck) map[string]ebpf.ProgramID {
	adopt := pinstore.Adoption{Want: p.digests}
	if man != nil {
		adopt.Recorded = man.Programs
	}
	adopted := map[string]ebpf.ProgramID{}
	for i := range oc.Programs {
		pc := &oc.Programs[i]
		pinned, err := ebpf.LoadPinnedProgram(obj.Path(pinstore.Programs, pc.Name), nil)
		if err != nil {
			pc.Reload, pc.Why = "load", "nothing pinned"
			continue
		}
		mismatch, err := pinstore.ProgramMismatch(p.spec, pc.Name, pinned, ids, adopt)
		switch {
		case err != nil:
			pc.Reload, pc.Why = "load", err.Error()
		case mismatch != "":
			pc.Reload, pc.Why = "load", mismatch
		default:
			pc.Reload = "adopt"
			if id, err := pinstore.ProgramID(pinned); err == nil {
				adopted[pc.Name] = id
			}
		}
		pinned.Close()
	}
	return adopted
}

// previewLinks sets each link's Reload, as linkReconcile would decide.
func previewLinks(obj *pinstore.Object, p *Plan, man *pinstore.Manifest, adopted map[string]ebpf.ProgramID, oc *ObjectCheck) {
	for i, pl := range p.links {
		lc := &oc.Links[i]
		a, err := hooks.LoadPinned(obj.Path(pinstore.Links, pl.name))
		if errors.Is(err, os.ErrNotExist) {
			lc.Reload = "attach"
			continue
		}
		if err != nil {
			lc.Reload, lc.Error = "make-before-break", err.Error()
			continue
		}
		lc.Reload = linkDecision(pl, a, man, adopted[pl.program], p.force)
		a.Close()
		if lc.Reload == "refuse" && lc.Error == "" {
			lc.Error = "the pinned link runs a program bpfsup did not put there; a reload refuses it (remove it, or run with --force)"
		}
	}
}

// linkDecision is what a reload would do with the attachment a pinned for
// pl, whose program would be adopted as prog (0: loaded anew).
func linkDecision(pl plannedLink, a hooks.Attachment, man *pinstore.Manifest, prog ebpf.ProgramID, force bool) string {
	info, err := a.Info()
	if err != nil {
		return "make-before-break"
	}
	state, err := pl.hook.Check(a)
	if err != nil {
		return "make-before-break"
	}
	if state == hooks.Unknown {
		state = recordedState(man, pl.name, pl.hook.Spec())
	}
	if !force && !linkIsOurs(man, pl.name, info, prog) {
		return "refuse"
	}
	switch state {
	case hooks.Attached:
		if prog != 0 && info.Program == prog {
			return "keep"
		}
		if pl.hook.Updatable() {
			return "update-in-place"
		}
	case hooks.Defunct:
		if hooks.CheckTarget(pl.hook.Spec()) != nil {
			return "keep-defunct"
		}
	}
	return "make-before-break"
}
