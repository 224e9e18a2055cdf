package converge

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/config"
	"github.com/bpfsup/bpfsup/handoff"
	"github.com/bpfsup/bpfsup/hooks"
	"github.com/bpfsup/bpfsup/internal/fastio"
	"github.com/bpfsup/bpfsup/internal/objsign"
	"github.com/bpfsup/bpfsup/pinstore"
)

// Plan is an object's configuration checked against its ELF, before
// anything is created: every error of the user's input shows up here.
type Plan struct {
	cfg    config.Object
	name   string
	spec   *ebpf.CollectionSpec
	sha256 string
	// signer names the key that signed the object file, "" when unsigned.
	signer   string
	maps     []string // non-internal maps, sorted
	links    []plannedLink
	mapCfg   map[string]config.Map
	progCfg  map[string]config.Program
	progList []string
	// force replaces foreign pins (PlanOptions.Force) instead of stopping.
	force bool
	// key is PlannerKey's, for the manifest (see AdoptUnchanged).
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
	// place is the link's place on an ordered hook (order.go).
	place linkPlace
}

// PlanOptions is what plans depend on besides an object's configuration.
type PlanOptions struct {
	// Netns is the network namespace (a path) of network hooks whose
	// attachment names none: the run's --netns.
	Netns string
	// Force replaces foreign pins at the object's paths instead of
	// stopping (make-before-break).
	Force bool
	// Key is PlannerKey's: the manifest records it, for AdoptUnchanged.
	Key string
	// Store is where anchors of this configuration are pinned (the links
	// of before = and after = that name an attachment of it).
	Store pinstore.Store
	// EnforceOrder moves links on ordered hooks back to their configured
	// place when something else took it (CheckOrder).
	EnforceOrder bool
}

// PlanObject reads the object file of cfg and checks the configuration
// against it: every error of the user's input shows up here, before
// anything is made.
func PlanObject(cfg config.Object, opts PlanOptions) (*Plan, error) {
	f, err := readObject(cfg)
	if err != nil {
		return nil, err
	}
	return planObjectData(cfg, f, opts)
}

// PlanAll plans every object of cfgs; two of one name are an error.
func PlanAll(cfgs []config.Object, opts PlanOptions) ([]*Plan, error) {
	var plans []*Plan
	names := map[string]string{}
	for _, c := range cfgs {
		p, err := PlanObject(c, opts)
		if err != nil {
			return nil, err
		}
		if prev, ok := names[p.name]; ok {
			return nil, fmt.Errorf("objects %s and %s are both named %q; give one a name", prev, c.Path, p.name)
		}
		names[p.name] = c.Path
		plans = append(plans, p)
	}
	if err := planOrder(plans, opts.Store); err != nil {
		return nil, err
	}
	return plans, nil
}

// Name is the object's name in the pin layout.
func (p *Plan) Name() string { return p.name }

// ObjectSHA256 is the hex SHA-256 of an object file's content, as the
// manifest records it.
func ObjectSHA256(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// objectFile is an object file's content, verified as its configuration
// says (see readObject): these bytes, not the file, are parsed and loaded.
type objectFile struct {
	data []byte
	// sha is the content's SHA-256, when the verification computed it;
	// signer names the key that signed it, "" when unsigned.
	sha, signer string
}

// digest is the content's SHA-256.
func (f *objectFile) digest() string {
	if f.sha == "" {
		f.sha = ObjectSHA256(f.data)
	}
	return f.sha
}

// readObject reads the object file of cfg and, before anything parses it,
// checks its digest and signature as cfg says (cfg.SHA256, cfg.Signature,
// cfg.TrustedKeys, cfg.RequireSignature; internal/objsign).
func readObject(cfg config.Object) (objectFile, error) {
	return readObjectInto(cfg, nil)
}

// readObjectInto is readObject into buf's memory (fastio.ReadFileInto).
func readObjectInto(cfg config.Object, buf []byte) (objectFile, error) {
	if cfg.Path == "" {
		return objectFile{}, errors.New("object without a path")
	}
	data, err := fastio.ReadFileInto(cfg.Path, buf)
	if err != nil {
		return objectFile{}, fmt.Errorf("object %s: %w", cfg.Path, err)
	}
	f := objectFile{data: data}
	if cfg.SHA256 == "" && cfg.Signature == "" && len(cfg.TrustedKeys) == 0 && !cfg.RequireSignature {
		return f, nil
	}
	var keys *objsign.Keys
	if len(cfg.TrustedKeys) > 0 {
		if keys, err = objsign.LoadKeys(cfg.TrustedKeys); err != nil {
			return objectFile{}, err
		}
	}
	res, err := objsign.Verify(cfg.Path, data, objsign.Want{SHA256: cfg.SHA256, Signature: cfg.Signature, Keys: keys, Require: cfg.RequireSignature})
	if err != nil {
		return objectFile{}, err
	}
	f.sha, f.signer = res.SHA256, res.Signer
	return f, nil
}

// ReadObject reads the object file of cfg, verified as readObject does.
func ReadObject(cfg config.Object) ([]byte, error) {
	f, err := readObject(cfg)
	return f.data, err
}

// ObjectName is the name the object of cfg is pinned under.
func ObjectName(cfg config.Object) string {
	if cfg.Name != "" {
		return cfg.Name
	}
	return pinstore.ObjectName(cfg.Path)
}

// planObjectData is PlanObject of the object file's content, f.
func planObjectData(cfg config.Object, f objectFile, opts PlanOptions) (*Plan, error) {
	spec, err := loadSpec(cfg.Path, f.data)
	if err != nil {
		return nil, err
	}
	sha := f.digest()
	name := ObjectName(cfg)
	if err := pinstore.CheckName("object", name); err != nil {
		return nil, fmt.Errorf("object %s: %w (set a name for it)", cfg.Path, err)
	}
	p := &Plan{cfg: cfg, name: name, spec: spec, sha256: sha, signer: f.signer, mapCfg: cfg.Maps, progCfg: cfg.Programs, force: opts.Force, key: opts.Key}
	if err := p.setVariables(); err != nil {
		return nil, err
	}
	if err := p.planMaps(); err != nil {
		return nil, err
	}
	if err := p.planPrograms(); err != nil {
		return nil, err
	}
	count := map[string]int{}
	for _, a := range cfg.Attach {
		count[a.Program]++
	}
	seen := map[string]string{}
	for _, a := range cfg.Attach {
		if err := p.planAttachment(a, count[a.Program] == 1, opts.Netns, seen); err != nil {
			return nil, err
		}
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

// loadSpec parses the ELF object of path, whose content is data.
func loadSpec(path string, data []byte) (*ebpf.CollectionSpec, error) {
	if !bytes.HasPrefix(data, []byte("\x7fELF")) {
		return nil, fmt.Errorf("object %s: not an ELF file (%d bytes, starting %q)", path, len(data), data[:min(len(data), 8)])
	}
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(data))
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return nil, fmt.Errorf("object %s: the ELF file is truncated (%d bytes): %w", path, len(data), err)
	}
	if err != nil {
		return nil, fmt.Errorf("object %s: not a BPF ELF object bpfsup can load: %w", path, err)
	}
	if spec.ByteOrder != nil && spec.ByteOrder.String() != pinstore.HostEndian().String() {
		return nil, fmt.Errorf("object %s: built for %s byte order, this machine is %s", path, spec.ByteOrder, pinstore.HostEndian())
	}
	return spec, nil
}

// setVariables sets the global variables the configuration gives values,
// each a number of the variable's size and sign, or an error.
func (p *Plan) setVariables() error {
	for vname, value := range p.cfg.Variables {
		v, ok := p.spec.Variables[vname]
		if !ok {
			return fmt.Errorf("object %s: variable %q not in the object", p.name, vname)
		}
		signed := false
		if v.Type != nil {
			if i, ok := btf.UnderlyingType(v.Type.Type).(*btf.Int); ok {
				signed = i.Encoding == btf.Signed
			}
		}
		val, err := config.VariableValue(value, v.Size(), signed)
		if err != nil {
			return fmt.Errorf("object %s: variable %s = %v: %w", p.name, vname, value, err)
		}
		if err := v.Set(val); err != nil {
			return fmt.Errorf("object %s: set variable %s: %w", p.name, vname, err)
		}
	}
	return nil
}

// planMaps lists the object's maps and checks their configuration.
func (p *Plan) planMaps() error {
	name, spec := p.name, p.spec
	for mname := range spec.Maps {
		if pinstore.IsInternalMap(mname) {
			continue
		}
		if err := pinstore.CheckName("map", mname); err != nil {
			return fmt.Errorf("object %s: %w", name, err)
		}
		p.maps = append(p.maps, mname)
	}
	sort.Strings(p.maps)
	for mname, mc := range p.cfg.Maps {
		if _, ok := spec.Maps[mname]; !ok || pinstore.IsInternalMap(mname) {
			return fmt.Errorf("object %s: map %q in the configuration is not in the object (has: %s)", name, mname, strings.Join(p.maps, ", "))
		}
		if mc.PinPath != "" {
			if !filepath.IsAbs(mc.PinPath) || filepath.Clean(mc.PinPath) != mc.PinPath {
				return fmt.Errorf("object %s: map %s: pin_path %q: want an absolute path without . or .. (like /sys/fs/bpf/shared/%s)", name, mname, mc.PinPath, mname)
			}
			if err := pinstore.CheckName("map", filepath.Base(mc.PinPath)); err != nil {
				return fmt.Errorf("object %s: map %s: pin_path %q: %w", name, mname, mc.PinPath, err)
			}
		}
		if ms := spec.Maps[mname]; mc.Migrate == config.MigrateCopy && !pinstore.Copyable(ms.Type, ms.ValueSize) {
			return fmt.Errorf("object %s: map %s: migrate = \"copy\" cannot copy a %s map (its values are not plain data, or it has no keys to copy by); use reset = true", name, mname, ms.Type)
		}
	}
	return nil
}

// planPrograms lists the object's programs and checks their configuration.
func (p *Plan) planPrograms() error {
	p.progList = pinstore.ProgramNames(p.spec)
	for _, pname := range p.progList {
		if err := pinstore.CheckName("program", pname); err != nil {
			return fmt.Errorf("object %s: %w", p.name, err)
		}
	}
	if len(p.progList) > 0 && p.spec.Programs[p.progList[0]].License == "" {
		// The kernel would load most programs without one, and refuse only
		// GPL-only helpers, with an error that does not say why.
		return fmt.Errorf("object %s: no license section: add char LICENSE[] SEC(\"license\") = \"GPL\"; "+
			"(or another license) to the source, the kernel decides by it which helpers the programs may call", p.cfg.Path)
	}
	for pname := range p.cfg.Programs {
		if !contains(p.progList, pname) {
			return fmt.Errorf("object %s: program %q in the configuration is not in the object (has: %s)", p.name, pname, strings.Join(p.progList, ", "))
		}
	}
	return nil
}

// planAttachment plans the link of attachment a; once says the program is
// attached once (its link is named like it); seen maps the link names
// planned to their hooks.
func (p *Plan) planAttachment(a config.Attach, once bool, defaultNetns string, seen map[string]string) error {
	name := p.name
	ps, ok := p.spec.Programs[a.Program]
	if !ok || ps.Type == ebpf.UnspecifiedProgram {
		return fmt.Errorf("object %s: program %q not in the object (has: %s)", name, a.Program, strings.Join(p.progList, ", "))
	}
	// A whole hook spec, or only its target where the section names the
	// kind of hook (-a count@veth0 for SEC("xdp")).
	hs, err := hooks.Resolve(a.Hook, a.Program, ps)
	if err != nil {
		return fmt.Errorf("object %s: program %s: %w", name, a.Program, err)
	}
	if hs.IsNetwork() {
		hs.Netns = a.Netns
		if hs.Netns == "" {
			hs.Netns = defaultNetns
		}
	} else if a.Netns != "" {
		return fmt.Errorf("object %s: program %s: netns given for %s, which is not a network hook", name, a.Program, hs)
	}
	h, err := hooks.New(hs)
	if err != nil {
		return fmt.Errorf("object %s: program %s: %w", name, a.Program, err)
	}
	if err := hooks.Prepare(h, a.Program, ps); err != nil {
		return fmt.Errorf("object %s: program %s: %w", name, a.Program, err)
	}
	lname := a.Name
	if lname == "" {
		lname = pinstore.LinkName(a.Program, hs.Target, once)
	}
	if err := pinstore.CheckName("link", lname); err != nil {
		return fmt.Errorf("object %s: %w", name, err)
	}
	if prev, dup := seen[lname]; dup {
		return fmt.Errorf("object %s: attachments %s and %s would both pin link %q; give one a name", name, prev, hs, lname)
	}
	place, err := placeOf(a, h)
	if err != nil {
		return fmt.Errorf("object %s: program %s: %w", name, a.Program, err)
	}
	seen[lname] = hs.String()
	p.links = append(p.links, plannedLink{name: lname, program: a.Program, hook: h, place: place})
	return nil
}

// checkHandoffNames checks that every fd the child will get has a name
// LISTEN_FDNAMES can carry (at most 255 bytes, as sd_listen_fds_with_names
// takes them): "<object>/maps/<map>" and its kin, of names each within the
// limits of the pin layout, may be longer together.
func checkHandoffNames(p *Plan) error {
	check := func(kind, name, fname string) error {
		if err := handoff.CheckName(fname); err != nil {
			return fmt.Errorf("object %s: %s %s is handed to the application as %q, %d bytes, and LISTEN_FDNAMES takes names of at most 255: give the object a shorter name", p.name, kind, name, fname, len(fname))
		}
		return nil
	}
	for _, m := range p.maps {
		if p.mapCfg[m].Access != config.AccessNone {
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
const newestProgramTypes = ebpf.Netfilter

// programSupport says whether the kernel can load programs like ps: its
// type (probed for the types newer than 6.1) and, for XDP, multi-buffer
// packets (xdp.frags, 5.18).
func programSupport(ps *ebpf.ProgramSpec) error {
	if ps.Type == ebpf.XDP && ps.Flags&unix.BPF_F_XDP_HAS_FRAGS != 0 {
		return hooks.HaveXDPFrags()
	}
	if ps.Type < newestProgramTypes {
		return nil
	}
	return features.HaveProgramType(ps.Type)
}

// skipUnsupported leaves out the programs nothing attaches whose type this
// kernel does not have (SEC("netfilter") before 6.4): an object built for
// several kernels still starts on the older ones, and the log says what was
// left out. A program an attachment names stops the start instead, with an
// error that names the hook, rather than the verifier's bare EINVAL.
func skipUnsupported(p *Plan) error {
	attached := map[string]hooks.Spec{}
	for _, pl := range p.links {
		attached[pl.program] = pl.hook.Spec()
	}
	kept := p.progList[:0]
	for _, pname := range p.progList {
		ps := p.spec.Programs[pname]
		err := programSupport(ps)
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
func planSectionHooks(p *Plan, count map[string]int, seen map[string]string) error {
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
		if !p.progCfg[pname].AutoAttaches() {
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
func renamedLink(obj *pinstore.Object, p *Plan, pl plannedLink, old *pinstore.Manifest) string {
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

// Precheck checks that every network hook's interface exists, unless a
// link is already pinned for it (a defunct link is kept until its interface
// is back): a missing interface is the user's input, said before anything is
// made.
func (p *Plan) Precheck(store pinstore.Store) error {
	for _, pl := range p.links {
		if err := p.precheckLink(store, pl); err != nil {
			return fmt.Errorf("object %s: program %s: %w", p.name, pl.program, err)
		}
	}
	return nil
}

// precheckLink is Precheck of one link.
func (p *Plan) precheckLink(store pinstore.Store, pl plannedLink) error {
	spec := pl.hook.Spec()
	if !spec.IsNetwork() {
		return nil
	}
	if pinstore.Exists(filepath.Join(store.ObjectDir(p.name), string(pinstore.Links), pl.name)) {
		return nil
	}
	return hooks.CheckTarget(spec)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
