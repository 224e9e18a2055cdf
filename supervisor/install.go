package supervisor

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/bpfsup/bpfsup/internal/bpffs"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/handoff"
	"github.com/bpfsup/bpfsup/hooks"
	"github.com/bpfsup/bpfsup/internal/crash"
	"github.com/bpfsup/bpfsup/pinstore"
)

// plan is an object's configuration checked against its ELF, before anything
// is created: every error of the user's input shows up here.
type plan struct {
	cfg      ObjectConfig
	name     string
	spec     *ebpf.CollectionSpec
	sha256   string
	maps     []string // non-internal maps, sorted
	links    []plannedLink
	mapCfg   map[string]MapConfig
	progCfg  map[string]ProgramConfig
	progList []string
	// force replaces foreign pins (Options.Force) instead of stopping.
	force bool
	// key is plannerKey's, for the manifest (see adoptUnchanged).
	key string
	// digests are the programs' (pinstore.DigestPrograms), recorded in the
	// manifest to check adoptions by.
	digests map[string]pinstore.ProgramDigest
	// unattached lists the programs no attachment names and whose section
	// names no whole hook, for the log.
	unattached []unattachedProgram
	// skipped lists the programs left out because the kernel lacks their
	// type (skipUnsupported).
	skipped []unattachedProgram
}

type plannedLink struct {
	name    string
	program string
	hook    hooks.Hook
}

// planObject reads and checks one object's configuration. defaultNetns is the
// run's --netns.
func planObject(cfg ObjectConfig, defaultNetns string) (*plan, error) {
	data, err := readObject(cfg)
	if err != nil {
		return nil, err
	}
	return planObjectData(cfg, data, objectSHA256(data), defaultNetns)
}

// objectSHA256 is the hex SHA-256 of an object file's content, as the
// manifest records it.
func objectSHA256(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// readObject reads the object file of cfg.
func readObject(cfg ObjectConfig) ([]byte, error) {
	if cfg.Path == "" {
		return nil, errors.New("object without a path")
	}
	data, err := os.ReadFile(cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("object %s: %w", cfg.Path, err)
	}
	return data, nil
}

// objectName is the name the object of cfg is pinned under.
func objectName(cfg ObjectConfig) string {
	if cfg.Name != "" {
		return cfg.Name
	}
	return pinstore.ObjectName(cfg.Path)
}

// planObjectData is planObject of the object file's content, data, whose
// SHA-256 is sha.
func planObjectData(cfg ObjectConfig, data []byte, sha, defaultNetns string) (*plan, error) {
	if !bytes.HasPrefix(data, []byte("\x7fELF")) {
		return nil, fmt.Errorf("object %s: not an ELF file (%d bytes, starting %q)", cfg.Path, len(data), data[:min(len(data), 8)])
	}
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(data))
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, fmt.Errorf("object %s: the ELF file is truncated (%d bytes): %w", cfg.Path, len(data), err)
	}
	if err != nil {
		return nil, fmt.Errorf("object %s: not a BPF ELF object bpfsup can load: %w", cfg.Path, err)
	}
	if spec.ByteOrder != nil && spec.ByteOrder.String() != pinstore.HostEndian().String() {
		return nil, fmt.Errorf("object %s: built for %s byte order, this machine is %s", cfg.Path, spec.ByteOrder, pinstore.HostEndian())
	}
	name := objectName(cfg)
	if err := pinstore.CheckName("object", name); err != nil {
		return nil, fmt.Errorf("object %s: %w (set a name for it)", cfg.Path, err)
	}
	p := &plan{cfg: cfg, name: name, spec: spec, sha256: sha,
		mapCfg: cfg.Maps, progCfg: cfg.Programs}

	for vname, value := range cfg.Variables {
		v, ok := spec.Variables[vname]
		if !ok {
			return nil, fmt.Errorf("object %s: variable %q not in the object", name, vname)
		}
		if err := v.Set(convertNumber(value, v.Size())); err != nil {
			return nil, fmt.Errorf("object %s: set variable %s: %w", name, vname, err)
		}
	}

	for mname := range spec.Maps {
		if pinstore.IsInternalMap(mname) {
			continue
		}
		if err := pinstore.CheckName("map", mname); err != nil {
			return nil, fmt.Errorf("object %s: %w", name, err)
		}
		p.maps = append(p.maps, mname)
	}
	sort.Strings(p.maps)
	for mname, mc := range cfg.Maps {
		if _, ok := spec.Maps[mname]; !ok || pinstore.IsInternalMap(mname) {
			return nil, fmt.Errorf("object %s: map %q in the configuration is not in the object (has: %s)", name, mname, strings.Join(p.maps, ", "))
		}
		if err := checkAccess(mc.Access); err != nil {
			return nil, fmt.Errorf("object %s: map %s: %w", name, mname, err)
		}
		if mc.PinPath != "" {
			if !filepath.IsAbs(mc.PinPath) || filepath.Clean(mc.PinPath) != mc.PinPath {
				return nil, fmt.Errorf("object %s: map %s: pin_path %q: want an absolute path without . or .. (like /sys/fs/bpf/shared/%s)", name, mname, mc.PinPath, mname)
			}
			if err := pinstore.CheckName("map", filepath.Base(mc.PinPath)); err != nil {
				return nil, fmt.Errorf("object %s: map %s: pin_path %q: %w", name, mname, mc.PinPath, err)
			}
		}
		if mc.Migrate != "" && mc.Migrate != "copy" {
			return nil, fmt.Errorf("object %s: map %s: migrate %q: only \"copy\" is known", name, mname, mc.Migrate)
		}
		if ms := spec.Maps[mname]; mc.Migrate == "copy" && !pinstore.Copyable(ms.Type, ms.ValueSize) {
			return nil, fmt.Errorf("object %s: map %s: migrate = \"copy\" cannot copy a %s map (its values are not plain data, or it has no keys to copy by); use reset = true", name, mname, ms.Type)
		}
	}

	p.progList = pinstore.ProgramNames(spec)
	for _, pname := range p.progList {
		if err := pinstore.CheckName("program", pname); err != nil {
			return nil, fmt.Errorf("object %s: %w", name, err)
		}
	}
	if len(p.progList) > 0 && spec.Programs[p.progList[0]].License == "" {
		// The kernel would load most programs without one, and refuse only
		// GPL-only helpers, with an error that does not say why.
		return nil, fmt.Errorf("object %s: no license section: add char LICENSE[] SEC(\"license\") = \"GPL\"; "+
			"(or another license) to the source, the kernel decides by it which helpers the programs may call", cfg.Path)
	}
	for pname := range cfg.Programs {
		if !contains(p.progList, pname) {
			return nil, fmt.Errorf("object %s: program %q in the configuration is not in the object (has: %s)", name, pname, strings.Join(p.progList, ", "))
		}
	}

	count := map[string]int{}
	for _, a := range cfg.Attach {
		count[a.Program]++
	}
	seen := map[string]string{}
	for _, a := range cfg.Attach {
		ps, ok := spec.Programs[a.Program]
		if !ok || ps.Type == ebpf.UnspecifiedProgram {
			return nil, fmt.Errorf("object %s: program %q not in the object (has: %s)", name, a.Program, strings.Join(p.progList, ", "))
		}
		// A whole hook spec, or only its target where the section names the
		// kind of hook (-a count@veth0 for SEC("xdp")).
		hs, err := hooks.Resolve(a.Hook, a.Program, ps)
		if err != nil {
			return nil, fmt.Errorf("object %s: program %s: %w", name, a.Program, err)
		}
		if hs.IsNetwork() {
			hs.Netns = a.Netns
			if hs.Netns == "" {
				hs.Netns = defaultNetns
			}
		} else if a.Netns != "" {
			return nil, fmt.Errorf("object %s: program %s: netns given for %s, which is not a network hook", name, a.Program, hs)
		}
		h, err := hooks.New(hs)
		if err != nil {
			return nil, fmt.Errorf("object %s: program %s: %w", name, a.Program, err)
		}
		if err := hooks.Prepare(h, a.Program, ps); err != nil {
			return nil, fmt.Errorf("object %s: program %s: %w", name, a.Program, err)
		}
		lname := a.Name
		if lname == "" {
			lname = pinstore.LinkName(a.Program, hs.Target, count[a.Program] == 1)
		}
		if err := pinstore.CheckName("link", lname); err != nil {
			return nil, fmt.Errorf("object %s: %w", name, err)
		}
		if prev, dup := seen[lname]; dup {
			return nil, fmt.Errorf("object %s: attachments %s and %s would both pin link %q; give one a name", name, prev, hs, lname)
		}
		seen[lname] = hs.String()
		p.links = append(p.links, plannedLink{name: lname, program: a.Program, hook: h})
	}
	if err := planSectionHooks(p, count, seen); err != nil {
		return nil, err
	}
	if err := skipUnsupported(p); err != nil {
		return nil, err
	}
	if err := checkHandoffNames(p); err != nil {
		return nil, err
	}
	// Once the hooks set the load-time targets (Prepare), which the digests
	// cover.
	p.digests = pinstore.DigestPrograms(spec, sha)
	return p, nil
}

// checkHandoffNames checks that every fd the child will get has a name
// LISTEN_FDNAMES can carry (at most 255 bytes, as sd_listen_fds_with_names
// takes them): "<object>/maps/<map>" and its kin, of names each within the
// limits of the pin layout, may be longer together.
func checkHandoffNames(p *plan) error {
	check := func(kind, name, fname string) error {
		if err := handoff.CheckName(fname); err != nil {
			return fmt.Errorf("object %s: %s %s is handed to the application as %q, %d bytes, and LISTEN_FDNAMES takes names of at most 255: give the object a shorter name", p.name, kind, name, fname, len(fname))
		}
		return nil
	}
	for _, m := range p.maps {
		if p.mapCfg[m].Access != AccessNone {
			if err := check("map", m, p.name+"/maps/"+m); err != nil {
				return err
			}
		}
	}
	for _, pr := range p.progList {
		if p.progCfg[pr].Handoff {
			if err := check("program", pr, p.name+"/programs/"+pr); err != nil {
				return err
			}
		}
	}
	if p.cfg.HandoffLinks {
		for _, pl := range p.links {
			if err := check("link", pl.name, p.name+"/links/"+pl.name); err != nil {
				return err
			}
		}
	}
	return nil
}

// newestProgramTypes is the first program type newer than the oldest kernel
// bpfsup runs on (6.1): only these are probed, each costing a program load
// once per process; every older type is there.
const newestProgramTypes = ebpf.Netfilter // Linux 6.4

// skipUnsupported leaves out the programs nothing attaches whose type this
// kernel does not have (SEC("netfilter") before 6.4): an object built for
// several kernels still starts on the older ones, and the log says what was
// left out. A program an attachment names stops the start instead, with an
// error that names the hook, rather than the verifier's bare EINVAL.
func skipUnsupported(p *plan) error {
	attached := map[string]hooks.Spec{}
	for _, pl := range p.links {
		attached[pl.program] = pl.hook.Spec()
	}
	kept := p.progList[:0]
	for _, pname := range p.progList {
		ps := p.spec.Programs[pname]
		if ps.Type < newestProgramTypes {
			kept = append(kept, pname)
			continue
		}
		err := features.HaveProgramType(ps.Type)
		if !errors.Is(err, ebpf.ErrNotSupported) {
			kept = append(kept, pname)
			continue
		}
		if hs, ok := attached[pname]; ok {
			return fmt.Errorf("object %s: program %s: hook %s: this kernel cannot load %s programs: %w", p.name, pname, hs, ps.Type, err)
		}
		p.skipped = append(p.skipped, unattachedProgram{pname,
			fmt.Sprintf("this kernel cannot load %s programs (section %q): %v", ps.Type, ps.SectionName, err)})
		delete(p.spec.Programs, pname)
	}
	p.progList = kept
	filtered := p.unattached[:0]
	for _, u := range p.unattached {
		if _, ok := p.spec.Programs[u.program]; ok {
			filtered = append(filtered, u)
		}
	}
	p.unattached = filtered
	return nil
}

// planSectionHooks attaches the programs no attachment names where their
// section names a whole hook (SEC("tp/sched/sched_process_exec")). The
// others, whose hook needs a target (SEC("xdp")) or that have none (tail
// calls, socket filters), are loaded and pinned only: for the child, or for
// a later -a.
func planSectionHooks(p *plan, count map[string]int, seen map[string]string) error {
	tailCalls := map[string]string{}
	for _, mname := range p.maps {
		if ms := p.spec.Maps[mname]; ms.Type == ebpf.ProgramArray {
			for _, ref := range pinstore.References(ms) {
				tailCalls[ref.Name] = fmt.Sprintf("a tail call, in slot %v of prog array %s", ref.Key, mname)
			}
		}
	}
	for _, pname := range p.progList {
		ps := p.spec.Programs[pname]
		if count[pname] > 0 || ps == nil || ps.Type == ebpf.UnspecifiedProgram {
			continue
		}
		inf, err := hooks.FromSection(ps.SectionName)
		if why, ok := tailCalls[pname]; ok && (err != nil || inf.NeedsTarget) {
			p.unattached = append(p.unattached, unattachedProgram{pname, why})
			continue
		}
		if err != nil {
			p.unattached = append(p.unattached, unattachedProgram{pname, err.Error()})
			continue
		}
		if inf.NeedsTarget && ps.AttachTo == "" && (ps.Type == ebpf.Tracing || ps.Type == ebpf.LSM) {
			// The kernel wants these programs' target when it loads them.
			return fmt.Errorf("object %s: program %s (section %q) can only be loaded for a target: -a %s@%s:TARGET",
				p.name, pname, ps.SectionName, pname, inf.Spec)
		}
		if !p.progCfg[pname].autoAttach() {
			p.unattached = append(p.unattached, unattachedProgram{pname, "autoattach = false in its configuration"})
			continue
		}
		if inf.NeedsTarget {
			p.unattached = append(p.unattached, unattachedProgram{pname,
				fmt.Sprintf("section %q needs a target: -a %s@TARGET", ps.SectionName, pname)})
			continue
		}
		h, err := hooks.New(inf.Spec)
		if err == nil {
			err = hooks.Prepare(h, pname, ps)
		}
		if err != nil {
			return fmt.Errorf("object %s: program %s: hook %s from section %q: %w", p.name, pname, inf.Spec, ps.SectionName, err)
		}
		if prev, dup := seen[pname]; dup {
			return fmt.Errorf("object %s: attachment %s and program %s's section hook %s would both pin link %q; give the attachment a name", p.name, prev, pname, inf.Spec, pname)
		}
		seen[pname] = inf.Spec.String()
		p.links = append(p.links, plannedLink{name: pname, program: pname, hook: h})
	}
	return nil
}

// renamedLink is the name under which pl's XDP link is pinned when pl has no
// pin under its own name: the name the last install (old) recorded for a
// link of pl's program on pl's hook, or else any pin of the object's links
// that the plan does not name and that is attached to pl's hook (a crash
// right after a rename leaves the pin under a name old does not know).
// "" when there is none. Only XDP: its hook takes one link, so a second one
// cannot be attached beside the old and the old removed after, as every
// other hook allows.
func renamedLink(obj *pinstore.Object, p *plan, pl plannedLink, old *pinstore.Manifest) string {
	spec := pl.hook.Spec()
	if spec.Kind != "xdp" || pinstore.Exists(obj.Path(pinstore.Links, pl.name)) {
		return ""
	}
	planned := func(name string) bool {
		return slices.ContainsFunc(p.links, func(other plannedLink) bool { return other.name == name })
	}
	if old != nil {
		for name, rec := range old.Links {
			if name == pl.name || rec.Program != pl.program || rec.Hook != spec.String() || rec.Netns != spec.Netns || planned(name) {
				continue
			}
			if pinstore.Exists(obj.Path(pinstore.Links, name)) {
				return name
			}
		}
	}
	names, _ := obj.Pins(pinstore.Links)
	for _, name := range names {
		if name == pl.name || planned(name) {
			continue
		}
		l, err := hooks.LoadPinned(obj.Path(pinstore.Links, name))
		if err != nil {
			continue
		}
		st, err := pl.hook.Check(l)
		l.Close()
		if err == nil && st == hooks.Attached {
			return name
		}
	}
	return ""
}

// unattachedProgram is a program loaded and pinned but attached nowhere, and
// why.
type unattachedProgram struct{ program, why string }

// installed is an object as installed: the lock held, every map, program and
// link open.
type installed struct {
	plan     *plan
	obj      *pinstore.Object
	maps     map[string]*ebpf.Map
	progs    map[string]*ebpf.Program
	links    map[string]link.Link
	manifest *pinstore.Manifest
	// defunct names the links install kept defunct, their targets gone:
	// the first look at the interfaces (watchInterfaces) re-attaches them.
	defunct map[string]bool
	// briefs and linkIDs are what install learnt of adopted programs and
	// links, so that the manifest need not ask the kernel again.
	briefs  map[string]pinstore.ProgramBrief
	linkIDs map[string]link.ID
	// made names the maps this install created (rather than adopted).
	made map[string]bool
	// pinsLost says that the pin directory went with its bpffs (see
	// checkPinDir).
	pinsLost bool
	adopted  int // programs adopted without loading
	loaded   int
	// loadTook is the time spent loading programs (the verifier's);
	// swapTook the time spent reconciling links; swapped when that ended.
	loadTook, swapTook time.Duration
	swapped            time.Time
}

func (in *installed) close() {
	for _, m := range in.maps {
		m.Close()
	}
	for _, p := range in.progs {
		p.Close()
	}
	for _, l := range in.links {
		l.Close()
	}
	if in.obj != nil {
		in.obj.Close()
	}
}

// undo is a stack of actions that roll back an install that failed half-way.
type undo []func()

func (u *undo) push(f func()) { *u = append(*u, f) }
func (u undo) run() {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]()
	}
}

// hooksPrecheck checks that every network hook's interface exists, unless a
// link is already pinned for it (a defunct link is kept until its interface
// is back): a missing interface is the user's input, said before anything is
// made.
func hooksPrecheck(store pinstore.Store, p *plan) error {
	for _, pl := range p.links {
		spec := pl.hook.Spec()
		if !spec.IsNetwork() {
			continue
		}
		if pinstore.Exists(filepath.Join(store.ObjectDir(p.name), string(pinstore.Links), pl.name)) {
			continue
		}
		if err := hooks.CheckTarget(spec); err != nil {
			return fmt.Errorf("object %s: program %s: %w", p.name, pl.program, err)
		}
	}
	return nil
}

// installGates are the two points at which an install of a reload waits
// for the others.
type installGates struct {
	// beforeSwap is called once everything is loaded and pinned beside what
	// runs, just before the first link changes.
	beforeSwap func() error
	// afterSwap is called once every link and program pin is in place, with
	// the rollback still possible.
	afterSwap func() error
	// failed is called when the install fails between the two, before it
	// rolls back: it returns when the objects staged after it have rolled
	// back, so that a map pin they replaced in turn (a shared pin_path) is
	// restored last-first.
	failed func(error)
}

// install converges one object to its plan: adopts what is pinned and
// compatible, creates and pins what is missing, swaps links whose program
// changed (in place where the hook allows, make-before-break elsewhere) and
// removes pins the configuration no longer has. Until it returns an error
// it changes nothing it cannot undo; on error, it undoes what it did.
//
// pins, when not nil, holds what prefetchPins opened for the object; install
// takes it over and closes what it does not keep.
//
// gates, when not nil, hold the install twice for a reload of several
// objects (see stageInstalls); an error from either rolls the install back
// from there, as any failure would.
func install(obj *pinstore.Object, p *plan, pins *pinSet, gates *installGates, log *slog.Logger) (_ *installed, err error) {
	if pins == nil {
		pins = newPinSet()
	}
	defer pins.close()
	in := &installed{plan: p, obj: obj, maps: map[string]*ebpf.Map{}, progs: map[string]*ebpf.Program{}, links: map[string]link.Link{}, defunct: map[string]bool{},
		briefs: map[string]pinstore.ProgramBrief{}, linkIDs: map[string]link.ID{}, made: map[string]bool{}}
	// release closes what a rollback would need, once install is done
	// (deferred first, so that it runs after the rollback).
	var release undo
	defer func() { release.run() }()
	var rollback undo
	// swapping: between the gates, where a failure waits for the other
	// objects of the reload before rolling back (see installGates.failed).
	swapping := false
	defer func() {
		if err != nil {
			if swapping {
				gates.failed(err)
			}
			rollback.run()
			in.obj = nil // the caller owns obj
			in.close()
		}
	}()
	store := obj.Store()
	old, err := pins.readManifest(store, p.name)
	if err != nil {
		log.Warn("ignoring unreadable manifest", "object", p.name, "err", err)
		old = nil
	}
	pins.manifest, pins.manifestErr, pins.manifestRead = old, nil, true

	// Foreign pins are found before anything is made; see ownership.go.
	own := ownedBy(old)
	foreign, resetMaps, err := checkPinsBefore(obj, p, own, pins)
	if err != nil {
		return nil, fmt.Errorf("object %s: %w", p.name, err)
	}
	if len(foreign) > 0 && !p.force {
		return nil, foreignError(p.name, foreign)
	}
	logForeign(log, p.name, foreign)
	var asides []foreignPin
	for _, f := range foreign {
		if !f.aside {
			continue
		}
		back, err := moveAside(obj, f)
		if err != nil {
			return nil, fmt.Errorf("object %s: %w", p.name, err)
		}
		rollback.push(back)
		asides = append(asides, f)
	}

	// Maps.
	fresh := map[string]bool{}
	// The maps migrated maps replace, which the attached programs write
	// until their links swap.
	migrated := map[string]*ebpf.Map{}
	defer func() {
		for _, m := range migrated {
			m.Close()
		}
	}()
	for _, name := range p.maps {
		mc := p.mapCfg[name]
		res, err := obj.AdoptOrCreateMap(name, p.spec.Maps[name], pinstore.MapPolicy{PinPath: mc.PinPath, Reset: mc.Reset, Migrate: mc.Migrate, Foreign: resetMaps[name]})
		if err != nil {
			return nil, fmt.Errorf("object %s: %w", p.name, err)
		}
		if res.Migrated != nil {
			migrated[name] = res.Migrated
		}
		in.maps[name] = res.Map
		if res.Replaced != "" {
			log.Warn("replacing incompatible pinned map", "object", p.name, "map", name, "diff", res.Replaced)
		}
		if !res.Adopted {
			fresh[name] = true
			in.made[name] = true
		}
	}

	// Programs.
	loadStart := time.Now()
	adopt := pinstore.Adoption{Opened: pins.takeProgram, Want: p.digests}
	if old != nil {
		adopt.Recorded = old.Programs
	}
	progs, err := obj.AdoptOrLoadPrograms(p.spec, in.maps, ebpf.ProgramOptions{}, adopt)
	in.loadTook = time.Since(loadStart)
	if err != nil {
		if vlog := pinstore.VerifierLog(err, 20); vlog != "" {
			return nil, fmt.Errorf("%w\nverifier log (last lines):\n%s", err, vlog)
		}
		return nil, err
	}
	var replacedProgs []*ebpf.Program
	defer func() {
		for _, pr := range replacedProgs {
			pr.Close()
		}
	}()
	changed := false
	for name, r := range progs {
		in.progs[name] = r.Program
		if r.Adopted {
			in.adopted++
			in.briefs[name] = r.Brief
		} else {
			in.loaded++
			changed = true
			if r.Pinned != nil {
				log.Info("pinned program differs from the object, loading it anew", "object", p.name, "program", name, "reason", r.Mismatch)
				replacedProgs = append(replacedProgs, r.Pinned)
			}
		}
	}
	if err := fillNewMaps(p, in, fresh, log); err != nil {
		return nil, err
	}
	foreign, err = checkPinsAfterLoad(obj, p, own, progs, pins)
	if err != nil {
		return nil, fmt.Errorf("object %s: %w", p.name, err)
	}
	if len(foreign) > 0 && !p.force {
		return nil, foreignError(p.name, foreign)
	}
	logForeign(log, p.name, foreign)

	// Write-ahead: the manifest names what is about to be pinned, so that a
	// crash between here and the renames leaves pins the next start knows.
	// When every program and map was adopted, nothing new is pinned but
	// links, which the next start recognises by their programs.
	if changed || len(fresh) > 0 {
		man := newManifest(p, old, in)
		man.Generation = nextGeneration(old, changed)
		carryStale(man, old)
		if err := obj.WriteManifest(man); err != nil {
			return nil, err
		}
		rollback.push(func() {
			if old != nil {
				_ = obj.WriteManifest(old)
			}
		})
	}

	for _, name := range p.maps {
		if !fresh[name] {
			continue
		}
		path := obj.MapPath(name, pinstore.MapPolicy{PinPath: p.mapCfg[name].PinPath})
		existed := pinstore.Exists(path)
		// A reset or migrated map replaces a pinned one: a rollback pins
		// the old one (and its contents) back.
		var prev *ebpf.Map
		if existed {
			if m, err := ebpf.LoadPinnedMap(path, nil); err == nil {
				prev, _ = m.Clone() // without m's pin path, which Pin would rename
				m.Close()
			}
		}
		if err := obj.Pin(pinstore.Maps, path, in.maps[name]); err != nil {
			prev.Close()
			return nil, err
		}
		switch {
		case !existed:
			rollback.push(func() { os.Remove(path) })
		case prev != nil:
			release.push(func() { prev.Close() })
			rollback.push(func() {
				if err := obj.Pin(pinstore.Maps, path, prev); err != nil {
					log.Error("could not pin the replaced map back", "map", path, "err", err)
				}
			})
		}
	}

	// Programs with no pin yet are pinned before their links; programs that
	// replace a pinned one are moved into place after the links swapped.
	for _, name := range p.progList {
		r := progs[name]
		if r.Adopted || r.Pinned != nil {
			continue
		}
		path := r.Path
		if err := obj.Pin(pinstore.Programs, path, r.Program); err != nil {
			return nil, err
		}
		rollback.push(func() { os.Remove(path) })
	}

	if gates != nil {
		if err := gates.beforeSwap(); err != nil {
			return nil, err
		}
		swapping = true
	}
	swapStart := time.Now()
	// The copy of a migrated map was taken before the loads (of this object
	// and of the others of a reload): catch it up with what the running
	// programs wrote since, just before they are swapped out.
	for _, name := range p.maps {
		was := migrated[name]
		if was == nil {
			continue
		}
		put, deleted, err := pinstore.SyncEntries(was, in.maps[name])
		if err != nil {
			// The copy stands; what changed since it may be missing.
			log.Warn("migrated map not caught up with the writes since its copy", "object", p.name, "map", name, "err", err)
			continue
		}
		log.Info("migrated map caught up", "object", p.name, "map", name, "entries", put, "deleted", deleted)
	}
	if err := moveProgSlots(p, in, fresh, &rollback, &release, log); err != nil {
		return nil, err
	}
	// One rtnetlink socket per namespace for all the links' checks.
	endBatch := hooks.Batch()
	defer endBatch()
	for _, pl := range p.links {
		if from := renamedLink(obj, p, pl, old); from != "" {
			// The same hook under another name (a second attachment of its
			// program names both after their targets): the link moves to
			// the new name instead of a second one being attached, which an
			// XDP hook would refuse.
			if err := obj.RenamePin(pinstore.Links, from, pl.name); err != nil {
				return nil, fmt.Errorf("object %s: %w", p.name, err)
			}
			rollback.push(func() { _ = obj.RenamePin(pinstore.Links, pl.name, from) })
			log.Info("link renamed", "object", p.name, "from", from, "to", pl.name, "hook", pl.hook.Spec().String())
		}
		var progID ebpf.ProgramID
		if r := progs[pl.program]; r != nil && r.Adopted {
			progID = r.Brief.ID
		}
		l, id, defunct, err := reconcileLinkUndoable(obj, pl, in.progs[pl.program], progID, pins, &rollback, &release, p.force, log)
		if err != nil {
			return nil, fmt.Errorf("object %s: %w", p.name, err)
		}
		if l != nil {
			in.links[pl.name] = l
		}
		if id != 0 {
			in.linkIDs[pl.name] = id
		}
		if defunct {
			in.defunct[pl.name] = true
		}
	}
	endBatch()
	in.swapped = time.Now()
	in.swapTook = in.swapped.Sub(swapStart)

	for _, name := range p.progList {
		r := progs[name]
		if r.Adopted || r.Pinned == nil {
			continue
		}
		// A clone, without r.Pinned's pin path (which Pin would move), open
		// until after a rollback: r.Pinned is closed before it runs.
		prev, err := r.Pinned.Clone()
		if err != nil {
			return nil, fmt.Errorf("object %s: program %s: %w", p.name, name, err)
		}
		release.push(func() { prev.Close() })
		if err := obj.Pin(pinstore.Programs, r.Path, r.Program); err != nil {
			return nil, err
		}
		path := r.Path
		rollback.push(func() {
			if err := obj.Pin(pinstore.Programs, path, prev); err != nil {
				log.Error("could not pin the replaced program back", "program", path, "err", err)
			}
		})
	}
	if gates != nil {
		swapping = false
		if err := gates.afterSwap(); err != nil {
			return nil, err
		}
	}

	// Past this point nothing fails in a way that needs undoing.
	rollback = nil
	for _, f := range asides {
		os.Remove(asidePath(obj, f))
	}
	removeStale(obj, p, own, log)
	for _, u := range p.unattached {
		log.Info("program loaded and pinned, not attached", "object", p.name, "program", u.program, "why", u.why)
	}
	for _, u := range p.skipped {
		log.Warn("program not loaded: nothing attaches it and the kernel cannot load it", "object", p.name, "program", u.program, "why", u.why)
	}

	man := newManifest(p, old, in)
	man.Generation = nextGeneration(old, changed)
	// Links may change later (re-attached when an interface comes back):
	// the manifest asks the kernel from here on.
	in.briefs, in.linkIDs = nil, nil
	if _, err := obj.WriteManifestUnlessSame(man, old); err != nil {
		log.Warn("could not write manifest", "object", p.name, "err", err)
	}
	in.manifest = man
	return in, nil
}

// repinRecordedLink pins again the link the manifest records for pl when
// its pin is gone (removed by hand) but the link lives on the hook, held by
// a running bpfsup: that link is bpfsup's, and attaching another beside it
// would be refused (XDP) or run the program twice. It reports whether it
// pinned it.
func repinRecordedLink(obj *pinstore.Object, pl plannedLink, man *pinstore.Manifest, path string, log *slog.Logger) bool {
	if man == nil {
		return false
	}
	rec, ok := man.Links[pl.name]
	if !ok || rec.ID == 0 {
		return false
	}
	l, err := link.NewFromID(link.ID(rec.ID))
	if err != nil {
		return false
	}
	defer l.Close()
	if state, err := pl.hook.Check(l); err != nil || state != hooks.Attached {
		return false
	}
	if err := obj.Pin(pinstore.Links, path, l); err != nil {
		log.Warn("could not pin the recorded link again", "object", obj.Name, "link", pl.name, "id", rec.ID, "err", err)
		return false
	}
	log.Warn("link pin was gone; pinned the link bpfsup recorded again", "object", obj.Name, "link", pl.name, "id", rec.ID, "path", path)
	return true
}

// recordedState decides for a link whose hook the kernel does not describe
// (hooks.Unknown): it is Attached when the manifest records it on spec, and
// Elsewhere (replaced make-before-break) when the manifest says otherwise or
// says nothing.
//
// m is the manifest of what was installed before this install began: not
// the write-ahead one an install may have written since, which already
// names the hooks it is about to attach.
func recordedState(m *pinstore.Manifest, name string, spec hooks.Spec) hooks.State {
	if m == nil {
		return hooks.Elsewhere
	}
	if rec, ok := m.Links[name]; ok && rec.Hook == spec.String() && rec.Netns == spec.Netns {
		return hooks.Attached
	}
	return hooks.Elsewhere
}

// reconcileLink makes the link pl exist, pinned, with prog attached. It
// returns the open link, or nil when the link is kept defunct because its
// target is gone. recorded is the object's manifest (see recordedState).
func reconcileLink(obj *pinstore.Object, pl plannedLink, prog *ebpf.Program, recorded *pinstore.Manifest, rollback *undo, log *slog.Logger) (link.Link, error) {
	var release undo
	defer func() { release.run() }()
	pins := newPinSet()
	defer pins.close()
	pins.manifest, pins.manifestRead = recorded, true
	l, _, _, err := reconcileLinkUndoable(obj, pl, prog, 0, pins, rollback, &release, false, log)
	return l, err
}

// reconcileLinkUndoable is reconcileLink for an install that may roll back:
// what the rollback needs stays open until the caller runs release. A link
// running a program bpfsup did not put there is ErrLinkChanged unless force.
// progID is prog's id when the caller knows it (else 0); pins has the link's
// pin open if install looked at it already. It returns the link, and its id
// when it is the pinned link adopted as it was (else 0).
func reconcileLinkUndoable(obj *pinstore.Object, pl plannedLink, prog *ebpf.Program, progID ebpf.ProgramID, pins *pinSet, rollback, release *undo, force bool, log *slog.Logger) (_ link.Link, adoptedID link.ID, keptDefunct bool, _ error) {
	path := obj.Path(pinstore.Links, pl.name)
	spec := pl.hook.Spec()
	// A hook without bpf_links (tcx's tc fallback) names its attachment
	// after the pin, and says what it cannot promise on this kernel.
	hooks.BindPin(pl.hook, path)
	if c := hooks.Caveat(pl.hook); c != "" {
		log.Warn(c, "object", obj.Name, "link", pl.name, "hook", spec.String(), "mechanism", pl.hook.Mechanism())
	}
	pinned, info, err := pins.loadLink(path)
	if errors.Is(err, os.ErrNotExist) && repinRecordedLink(obj, pl, pins.manifest, path, log) {
		rollback.push(func() { hooks.Unpin(path) })
		pinned, info, err = pins.loadLink(path)
	}
	if errors.Is(err, os.ErrNotExist) {
		l, err := pl.hook.Attach(prog)
		if err != nil {
			return nil, 0, false, fmt.Errorf("program %s: %w", pl.program, err)
		}
		crash.At("links/attached")
		if err := obj.Pin(pinstore.Links, path, l); err != nil {
			l.Close()
			return nil, 0, false, err
		}
		rollback.push(func() { hooks.Unpin(path) })
		return l, 0, false, nil
	}
	if err != nil {
		return nil, 0, false, fmt.Errorf("link %s: load pin %s: %w", pl.name, path, err)
	}
	pins.takeLink(path) // returned, or closed, or released below

	state, err := pl.hook.Check(pinned)
	if err != nil {
		pinned.Close()
		return nil, 0, false, fmt.Errorf("link %s: %w", pl.name, err)
	}
	if state == hooks.Unknown {
		state = recordedState(pins.manifest, pl.name, spec)
	}
	if progID == 0 {
		if progID, err = pinstore.ProgramID(prog); err != nil {
			pinned.Close()
			return nil, 0, false, err
		}
	}
	// A link pin that holds what bpfsup did not make is never replaced
	// without --force: an install finds it before this (checkPinsAfterLoad),
	// a re-attach (an interface or namespace back) finds it here.
	if !force && !linkIsOurs(pins.manifest, pl.name, info, progID) {
		what := describeLink(pinned)
		pinned.Close()
		return nil, 0, false, fmt.Errorf("link %s: %w: %s holds %s, which bpfsup did not make; left alone (remove it, or run with --force)",
			pl.name, ErrForeignPin, path, what)
	}

	switch state {
	case hooks.Attached:
		if info.Program == progID {
			return pinned, info.ID, false, nil
		}
		if pl.hook.Updatable() {
			if err := checkLinkProgram(obj, pl.name, pl.program, info.Program, force); err != nil {
				pinned.Close()
				return nil, 0, false, err
			}
			oldProg, err := ebpf.NewProgramFromID(info.Program)
			if err != nil {
				pinned.Close()
				return nil, 0, false, fmt.Errorf("link %s: open its program %d: %w", pl.name, info.Program, err)
			}
			if err := updateLink(pinned, prog, oldProg); err != nil {
				err = fmt.Errorf("link %s: swap program %d for %d: %w", pl.name, info.Program, progID, replaceRefused(err, oldProg))
				oldProg.Close()
				pinned.Close()
				return nil, 0, false, err
			}
			crash.At("links/updated")
			release.push(func() { oldProg.Close() })
			rollback.push(func() {
				if err := updateLink(pinned, oldProg, prog); err != nil {
					log.Error("could not swap link back", "link", pl.name, "err", err)
				}
			})
			log.Info("swapped program in place", "link", pl.name, "hook", spec.String(), "old_program", info.Program, "new_program", progID)
			return pinned, 0, false, nil
		}
	case hooks.Defunct:
		if hooks.CheckTarget(spec) != nil {
			log.Warn("link is defunct and its target is gone; keeping it until the target is back", "link", pl.name, "hook", spec.String())
			return pinned, 0, true, nil
		}
	}

	// Make-before-break: the new link first, then the pin moves onto it, then
	// the old one goes (see below). Both may run for a moment, never neither.
	l, err := pl.hook.Attach(prog)
	if err != nil {
		pinned.Close()
		return nil, 0, false, fmt.Errorf("program %s: %w", pl.program, err)
	}
	crash.At("links/attached")
	if err := obj.Pin(pinstore.Links, path, l); err != nil {
		l.Close()
		pinned.Close()
		return nil, 0, false, err
	}
	log.Info("replaced link", "link", pl.name, "hook", spec.String(), "was", state.String(), "old_link", info.ID)
	// The old link stays open until the install is done (a reload's old
	// state holds it that long anyway): a rollback pins it back, and the
	// new one goes. Both run meanwhile, never neither.
	release.push(func() { pinned.Close() })
	rollback.push(func() {
		back, err := link.NewFromID(info.ID) // without pinned's pin path, which Pin would rename
		if err == nil {
			err = obj.Pin(pinstore.Links, path, back)
			back.Close() // the pin holds it
		}
		if err != nil {
			log.Error("could not pin the old link back", "link", pl.name, "err", err)
		}
	})
	return l, 0, false, nil
}

// linkIsOurs says whether the link pinned for link name, with info, is
// bpfsup's: the manifest records it or the program it runs, or it runs
// prog, the program about to be attached (adopted, as bpfsup would install
// it, where the manifest was lost).
func linkIsOurs(m *pinstore.Manifest, name string, info *link.Info, prog ebpf.ProgramID) bool {
	if info.Program == prog {
		return true
	}
	pi := bpffs.PinInfo{Kind: bpffs.Link, ID: uint32(info.ID), Program: uint32(info.Program)}
	return m.Owns(pinstore.Links, name, pi)
}

// updateLink swaps the link's program from old to prog, atomically and only
// if old is still the link's program (BPF_F_REPLACE).
func updateLink(l link.Link, prog, old *ebpf.Program) error {
	u, ok := l.(interface {
		UpdateArgs(link.RawLinkUpdateOptions) error
	})
	if !ok {
		return l.Update(prog)
	}
	return u.UpdateArgs(link.RawLinkUpdateOptions{New: prog, Old: old, Flags: unix.BPF_F_REPLACE})
}

// removeStale unpins links and programs of the object that the configuration
// no longer has. Maps stay: their contents may be wanted again.
func removeStale(obj *pinstore.Object, p *plan, own owned, log *slog.Logger) {
	want := map[string]bool{}
	for _, pl := range p.links {
		want[pl.name] = true
	}
	names, _ := obj.Pins(pinstore.Links)
	for _, n := range names {
		if !want[n] && staleIsOurs(obj, pinstore.Links, n, p, own, log) {
			log.Info("removing link no longer configured", "object", p.name, "link", n)
			if err := hooks.Unpin(obj.Path(pinstore.Links, n)); err != nil {
				log.Warn("could not remove link", "object", p.name, "link", n, "err", err)
			}
		}
	}
	names, _ = obj.Pins(pinstore.Programs)
	for _, n := range names {
		if !contains(p.progList, n) && staleIsOurs(obj, pinstore.Programs, n, p, own, log) {
			log.Info("removing program no longer in the object", "object", p.name, "program", n)
			os.Remove(obj.Path(pinstore.Programs, n))
		}
	}
}

// inodeCache keeps the inodes of network namespaces by path, for one
// manifest.
type inodeCache map[string]uint64

func (c inodeCache) of(path string) uint64 {
	ino, ok := c[path]
	if !ok {
		ino, _ = hooks.NetnsInode(path)
		c[path] = ino
	}
	return ino
}

// nextGeneration is the generation of an install after old: one more when
// a program changed, unless old recorded none (a first install that a
// crash cut short, or maps seeded before it).
func nextGeneration(old *pinstore.Manifest, changed bool) uint64 {
	switch {
	case old == nil:
		return 0
	case changed && len(old.Programs) > 0:
		return old.Generation + 1
	}
	return old.Generation
}

func newManifest(p *plan, old *pinstore.Manifest, in *installed) *pinstore.Manifest {
	netnsInodes := inodeCache{}
	m := &pinstore.Manifest{
		Source:       p.cfg.Path,
		ObjectSHA256: p.sha256,
		ConfigHash:   p.cfg.hash(),
		Maps:         map[string]pinstore.MapRecord{},
		Programs:     map[string]pinstore.ProgramRecord{},
		Links:        map[string]pinstore.LinkRecord{},
	}
	if old != nil {
		m.Generation = old.Generation
		m.Supervisor = old.Supervisor
	}
	if p.key != "" {
		m.Plan = &pinstore.PlanRecord{Key: p.key, Links: make([]string, 0, len(p.links))}
		for _, pl := range p.links {
			m.Plan.Links = append(m.Plan.Links, pl.name)
		}
	}
	for name, mp := range in.maps {
		rec := pinstore.MapRecord{Path: in.obj.MapPath(name, pinstore.MapPolicy{PinPath: p.mapCfg[name].PinPath})}
		if id, err := pinstore.MapID(mp); err == nil {
			rec.ID = uint32(id)
		}
		// A map in the object's directory is adopted only when the manifest
		// records it: bpfsup made it. One at a pin path of its own may be
		// another tool's, adopted there (see MapRecord.Made).
		rec.Made = in.made[name] || p.mapCfg[name].PinPath == ""
		if old != nil {
			if o, ok := old.Maps[name]; ok {
				rec.PreviousIDs = carryIDs(o.PreviousIDs, o.ID, rec.ID, mapAlive)
				rec.Made = rec.Made || (o.Made && o.ID == rec.ID)
			}
		}
		m.Maps[name] = rec
	}
	for name, pr := range in.progs {
		rec := pinstore.ProgramRecord{Type: pr.Type().String()}
		if b, ok := in.briefs[name]; ok {
			rec.ID, rec.Tag = uint32(b.ID), b.Tag
		} else if b, err := pinstore.BriefProgram(pr); err == nil {
			rec.ID, rec.Tag = uint32(b.ID), b.Tag
		}
		if d, ok := p.digests[name]; ok {
			rec.Source, rec.Data, rec.Target = d.Source, d.Data, d.Target
		}
		if old != nil {
			if o, ok := old.Programs[name]; ok {
				rec.PreviousIDs = carryIDs(o.PreviousIDs, o.ID, rec.ID, programAlive)
				if _, planned := p.digests[name]; !planned && o.ID == rec.ID {
					// Written without the object's spec (adoptUnchanged,
					// a re-attach): what was recorded still holds.
					rec.Source, rec.Data, rec.Target = o.Source, o.Data, o.Target
				}
			}
		}
		m.Programs[name] = rec
	}
	for _, pl := range p.links {
		spec := pl.hook.Spec()
		rec := pinstore.LinkRecord{Program: pl.program, Hook: spec.String(), Netns: spec.Netns,
			Mechanism: pl.hook.Mechanism(), Updatable: pl.hook.Updatable()}
		if spec.IsNetwork() {
			rec.NetnsInode = netnsInodes.of(spec.Netns)
		}
		if id, ok := in.linkIDs[pl.name]; ok {
			rec.ID = uint32(id)
		} else if l, ok := in.links[pl.name]; ok {
			if info, err := l.Info(); err == nil {
				rec.ID = uint32(info.ID)
			}
		}
		if old != nil {
			if o, ok := old.Links[pl.name]; ok {
				rec.PreviousIDs = carryIDs(o.PreviousIDs, o.ID, rec.ID, linkAlive)
			}
		}
		m.Links[pl.name] = rec
	}
	return m
}

// carryIDs is the list of earlier ids of a program or link: the previous
// list and the old id, without the current id, without ids the kernel no
// longer has (they cannot be pinned or attached any more) and without
// duplicates. Dropping only dead ids, rather than keeping the last few, means
// that a pin left by any number of crashed upgrades is still recognised.
func carryIDs(prev []uint32, oldID, cur uint32, alive func(uint32) bool) []uint32 {
	var out []uint32
	for _, id := range append(append([]uint32(nil), prev...), oldID) {
		if id == 0 || id == cur || containsID(out, id) || !alive(id) {
			continue
		}
		out = append(out, id)
	}
	return out
}

// alive says whether an object opened by its id (obj, err) is still in the
// kernel; it closes obj.
func alive[T io.Closer](obj T, err error) bool {
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	obj.Close()
	return true
}

func mapAlive(id uint32) bool     { return alive(ebpf.NewMapFromID(ebpf.MapID(id))) }
func programAlive(id uint32) bool { return alive(ebpf.NewProgramFromID(ebpf.ProgramID(id))) }
func linkAlive(id uint32) bool    { return alive(link.NewFromID(link.ID(id))) }

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// handoffFiles opens the fds the child gets for this object, in a stable
// order: maps, then programs and links where asked for. The caller closes them.
func (in *installed) handoffFiles() (_ []handoff.NamedFile, err error) {
	var files []handoff.NamedFile
	defer func() {
		if err != nil {
			for _, f := range files {
				f.File.Close()
			}
		}
	}()
	p := in.plan
	for _, name := range p.maps {
		access := p.mapCfg[name].Access
		fname := p.name + "/maps/" + name
		var fd int
		switch access {
		case AccessNone:
			continue
		case AccessRO, AccessWO:
			m, err := ebpf.LoadPinnedMap(in.obj.MapPath(name, pinstore.MapPolicy{PinPath: p.mapCfg[name].PinPath}),
				&ebpf.LoadPinOptions{ReadOnly: access == AccessRO, WriteOnly: access == AccessWO})
			if err != nil {
				return nil, fmt.Errorf("open map %s %s for the child: %w", fname, access, err)
			}
			fd, err = dupFD(m.FD())
			m.Close()
			if err != nil {
				return nil, err
			}
		default:
			fd, err = dupFD(in.maps[name].FD())
			if err != nil {
				return nil, err
			}
		}
		files = append(files, handoff.NamedFile{Name: fname, File: os.NewFile(uintptr(fd), fname)})
	}
	for _, name := range p.progList {
		if !p.progCfg[name].Handoff {
			continue
		}
		fname := p.name + "/programs/" + name
		fd, err := dupFD(in.progs[name].FD())
		if err != nil {
			return nil, err
		}
		files = append(files, handoff.NamedFile{Name: fname, File: os.NewFile(uintptr(fd), fname)})
	}
	if p.cfg.HandoffLinks {
		for _, pl := range p.links {
			l, ok := in.links[pl.name]
			if !ok {
				continue
			}
			fd, err := linkFD(l)
			if err != nil {
				return nil, err
			}
			fname := p.name + "/links/" + pl.name
			files = append(files, handoff.NamedFile{Name: fname, File: os.NewFile(uintptr(fd), fname)})
		}
	}
	return files, nil
}

func dupFD(fd int) (int, error) {
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("dup fd %d: %w", fd, err)
	}
	return nfd, nil
}

// linkFD opens a new fd for l, by its id.
func linkFD(l link.Link) (int, error) {
	if _, isLink := l.(interface{ FD() int }); !isLink {
		// A tc filter standing in for a tcx link: its id is its record's,
		// a map's, and must not be looked up as a link's.
		return -1, fmt.Errorf("%s is not a bpf_link and has no fd to hand over", l)
	}
	info, err := l.Info()
	if err != nil {
		return -1, err
	}
	nl, err := link.NewFromID(info.ID)
	if err != nil {
		return -1, err
	}
	defer nl.Close()
	fder, ok := nl.(interface{ FD() int })
	if !ok {
		return -1, fmt.Errorf("link %d has no fd", info.ID)
	}
	return dupFD(fder.FD())
}
