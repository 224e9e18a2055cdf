package hooks

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

func init() {
	for _, name := range []string{"uprobe", "uretprobe"} {
		register(name, kind{
			variants:    []string{""},
			needsTarget: true,
			make: func(s Spec) (Hook, error) {
				h, err := parseUprobe(s)
				if err != nil {
					return nil, err
				}
				return h, nil
			},
			check: func(s Spec) error {
				h, err := parseUprobe(s)
				if err != nil {
					return err
				}
				_, err = h.resolve()
				return err
			},
		})
	}
}

// uprobeHook attaches a Kprobe-type program to a function of an executable
// or library, on entry (uprobe) or return (uretprobe), with a perf_event
// bpf_link. The spec is uprobe:BINARY:SYMBOL[+OFFSET][:PID]: BINARY is a path
// (a bare name is a command in PATH or a library such as libc.so.6), SYMBOL a symbol of its symbol table or
// dynamic symbol table, OFFSET bytes past it (decimal or 0x hex), and PID,
// when given, limits the probe to that process. BINARY may not contain ':'.
//
// Such links cannot swap their program: upgrades are make-before-break. The
// kernel reports the probed file and offset but not the pid, so a pinned
// link on the right file and offset counts as attached whatever its pid.
// A binary replaced by a new file at the same path gets a new link on the
// new file: the old link stays on the old inode and reports it as deleted.
type uprobeHook struct {
	spec   Spec
	ret    bool
	binary string
	symbol string
	offset uint64
	pid    int
}

func parseUprobe(s Spec) (*uprobeHook, error) {
	bad := func(why string) error {
		return fmt.Errorf("hook %q: %s; want %s:BINARY:SYMBOL[+OFFSET][:PID]: %w", s, why, s.Kind, ErrBadSpec)
	}
	binary, rest, ok := strings.Cut(s.Target, ":")
	if !ok || binary == "" || rest == "" {
		return nil, bad("no symbol")
	}
	h := &uprobeHook{spec: s, ret: s.Kind == "uretprobe", binary: binary}
	sym := rest
	if i := strings.LastIndexByte(rest, ':'); i >= 0 {
		pid, err := strconv.Atoi(rest[i+1:])
		if err != nil || pid <= 0 {
			return nil, bad(fmt.Sprintf("pid %q is not a process id", rest[i+1:]))
		}
		sym, h.pid = rest[:i], pid
	}
	sym, off, hasOff := strings.Cut(sym, "+")
	if hasOff {
		n, err := strconv.ParseUint(off, 0, 64)
		if err != nil {
			return nil, bad(fmt.Sprintf("offset %q is not a number", off))
		}
		h.offset = n
	}
	if sym == "" || strings.ContainsAny(sym, " \t:") {
		return nil, bad(fmt.Sprintf("symbol %q", sym))
	}
	h.symbol = sym
	return h, nil
}

func (h *uprobeHook) Spec() Spec      { return h.spec }
func (h *uprobeHook) Updatable() bool { return false }
func (h *uprobeHook) Mechanism() string {
	return "bpf_link perf_event (" + h.spec.Kind + ")"
}

// resolve returns the binary's real path (symlinks resolved), which is the
// path the kernel reports for the probe.
func (h *uprobeHook) resolve() (string, error) {
	path := h.binary
	if !strings.Contains(path, "/") {
		p, err := lookBinary(path)
		if err != nil {
			return "", fmt.Errorf("hook %s: %w", h.spec, err)
		}
		path = p
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("hook %s: %w", h.spec, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("hook %s: binary %s: %w", h.spec, abs, ErrTargetNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("hook %s: %w", h.spec, err)
	}
	return real, nil
}

// libraryDirs are where a bare library name ("libc.so.6") is looked for, as
// the dynamic linker's default paths have it on the common distributions.
var libraryDirs = []string{"/lib64", "/usr/lib64", "/lib/*-linux-gnu", "/usr/lib/*-linux-gnu", "/lib", "/usr/lib"}

// lookBinary finds a bare name: a command in PATH, else a library in
// libraryDirs.
func lookBinary(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range libraryDirs {
		if m, _ := filepath.Glob(filepath.Join(dir, name)); len(m) > 0 {
			return m[0], nil
		}
	}
	return "", fmt.Errorf("binary %q is neither a command in PATH nor a library in %s: %w", name, strings.Join(libraryDirs, ", "), ErrTargetNotFound)
}

// prepare checks the program type, that the kernel has uprobes, and that the
// binary and its symbol exist, before anything is loaded.
func (h *uprobeHook) prepare(name string, ps *ebpf.ProgramSpec) error {
	if ps.Type != ebpf.Kprobe {
		return fmt.Errorf("hook %s needs a program of type %s (SEC(\"%s\")); program %s (section %q) is %s: %w",
			h.spec, ebpf.Kprobe, h.spec.Kind, name, ps.SectionName, ps.Type, ErrWrongProgramType)
	}
	if !haveProbes("uprobe") {
		return fmt.Errorf("hook %s: this kernel lacks uprobes (no uprobe PMU in /sys/bus/event_source/devices and no uprobe_events in tracefs; CONFIG_UPROBE_EVENTS is off): %w", h.spec, ErrNotSupported)
	}
	path, err := h.resolve()
	if err != nil {
		return err
	}
	_, err = symbolOffset(path, h.symbol)
	if err != nil {
		return fmt.Errorf("hook %s: %w", h.spec, err)
	}
	return nil
}

func (h *uprobeHook) Attach(prog *ebpf.Program) (Attachment, error) {
	if err := checkType(h.spec, prog, ebpf.Kprobe); err != nil {
		return nil, err
	}
	path, err := h.resolve()
	if err != nil {
		return nil, err
	}
	ex, err := link.OpenExecutable(path)
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", h.spec, err)
	}
	opts := &link.UprobeOptions{PID: h.pid, Offset: h.offset}
	var l link.Link
	if h.ret {
		l, err = ex.Uretprobe(h.symbol, prog, opts)
	} else {
		l, err = ex.Uprobe(h.symbol, prog, opts)
	}
	if errors.Is(err, link.ErrNoSymbol) {
		return nil, fmt.Errorf("attach %s: symbol %q not in %s: %w", h.spec, h.symbol, path, ErrTargetNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", h.spec, err)
	}
	if err := mustBePinnable(l); err != nil {
		return nil, fmt.Errorf("attach %s: %w", h.spec, err)
	}
	return attached(l), nil
}

func (h *uprobeHook) Check(a Attachment) (State, error) {
	info, err := linkInfoOf(a)
	if err != nil || info == nil {
		return Elsewhere, err
	}
	want := link.PerfEventUprobe
	if h.ret {
		want = link.PerfEventUretprobe
	}
	pe := info.PerfEvent()
	if st, known := perfEventState(info, pe); !known {
		return st, nil
	}
	if pe.Type != want {
		return Elsewhere, nil
	}
	up := pe.Uprobe()
	if up == nil {
		return Elsewhere, nil
	}
	path, err := h.resolve()
	if err != nil || up.File != path {
		return Elsewhere, nil
	}
	off, err := symbolOffset(path, h.symbol)
	if err != nil || uint64(up.Offset) != off+h.offset {
		return Elsewhere, nil
	}
	return Attached, nil
}

// symbolOffset returns the file offset of symbol in the ELF file at path, as
// the kernel's uprobe takes it: the symbol's address translated through the
// loadable segment that holds it.
func symbolOffset(path, symbol string) (uint64, error) {
	f, err := elf.Open(path)
	if err != nil {
		return 0, fmt.Errorf("binary %s: %w", path, err)
	}
	defer f.Close()
	var addr uint64
	found := false
	for _, list := range []func() ([]elf.Symbol, error){f.Symbols, f.DynamicSymbols} {
		syms, _ := list()
		for _, s := range syms {
			if s.Name == symbol && elf.ST_TYPE(s.Info) == elf.STT_FUNC && s.Value != 0 {
				addr, found = s.Value, true
				break
			}
		}
		if found {
			break
		}
	}
	if !found {
		return 0, fmt.Errorf("symbol %q not in %s: %w", symbol, path, ErrTargetNotFound)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 && addr >= p.Vaddr && addr < p.Vaddr+p.Memsz {
			return addr - p.Vaddr + p.Off, nil
		}
	}
	return 0, fmt.Errorf("symbol %q of %s is in no executable segment", symbol, path)
}

// haveProbes reports whether the kernel can make probes of the kind
// ("kprobe", "uprobe"): through its perf PMU, or through tracefs.
func haveProbes(kind string) bool {
	if _, err := os.Stat("/sys/bus/event_source/devices/" + kind + "/type"); err == nil {
		return true
	}
	if dir := tracefs(); dir != "" {
		if _, err := os.Stat(filepath.Join(dir, kind+"_events")); err == nil {
			return true
		}
	}
	return false
}
