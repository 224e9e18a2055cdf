package testutil

import (
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Feature is a kernel feature the tests depend on, with the oldest Linux version
// that has it, the configuration it needs, and a probe that asks the running
// kernel. docs/kernels.md is this table for people.
//
// The rule, cilium/ebpf's: a test skips only when the probe says the kernel
// lacks the feature, and a kernel that should have it (its version is new
// enough and its configuration has the options) fails the test instead of
// skipping it. A probe can also find a feature refused: present but failing
// for this environment's reasons (this project's development machine runs a
// kernel new enough for BPF trampolines that answers EPERM to them). A
// refused feature skips on such a machine, saying so, and fails inside the
// VMs of `make kernels` ($BPFSUP_TEST_VM set), whose stock kernels refuse
// nothing they have.
type Feature struct {
	// Name says what the feature is, for messages.
	Name string
	// MinVersion is the oldest Linux with the feature, "major.minor".
	MinVersion string
	// Config lists the kernel options it needs, e.g. "CONFIG_BPF_LSM".
	Config []string
	// Refusable says the probe may find the feature refused rather than
	// missing (see above).
	Refusable bool

	probe func() error
	once  sync.Once
	err   error
}

// The features. Keep docs/kernels.md in step.
var (
	TCX = &Feature{Name: "tcx links", MinVersion: "6.6", probe: probeTCX}
	// TCClsact is what tcx falls back to: a cls_bpf filter in direct-action
	// mode on the clsact qdisc.
	TCClsact = &Feature{Name: "tc clsact with cls_bpf", MinVersion: "4.5",
		Config: []string{"CONFIG_NET_SCH_INGRESS", "CONFIG_NET_CLS_BPF", "CONFIG_NET_CLS_ACT"},
		probe:  func() error { return features.HaveProgramType(ebpf.SchedCLS) }}
	Netkit = &Feature{Name: "netkit links", MinVersion: "6.7", Config: []string{"CONFIG_NETKIT"}, probe: probeNetkit}
	// XDPLink: XDP attached with a bpf_link rather than a netlink request.
	XDPLink       = &Feature{Name: "XDP links", MinVersion: "5.9", probe: probeXDPLink}
	NetfilterLink = &Feature{Name: "netfilter links", MinVersion: "6.4", Config: []string{"CONFIG_NETFILTER_BPF_LINK"},
		probe: func() error { return features.HaveProgramType(ebpf.Netfilter) }}
	UprobeMulti = &Feature{Name: "uprobe_multi links", MinVersion: "6.6", Config: []string{"CONFIG_UPROBES"},
		probe: features.HaveBPFLinkUprobeMulti}
	KprobeMulti = &Feature{Name: "kprobe_multi links", MinVersion: "5.18", Config: []string{"CONFIG_FPROBE"},
		probe: features.HaveBPFLinkKprobeMulti}
	Kprobes = &Feature{Name: "kprobes", MinVersion: "4.1", Config: []string{"CONFIG_KPROBES", "CONFIG_KPROBE_EVENTS"}, probe: probeKprobes}
	// Trampolines are fentry and fexit (tracing links).
	Trampolines = &Feature{Name: "BPF trampolines (fentry, fexit)", MinVersion: "5.5",
		Config: []string{"CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS", "CONFIG_DEBUG_INFO_BTF"}, Refusable: true,
		probe: func() error { return probeTracing(ebpf.Tracing, ebpf.AttachTraceFEntry, "bpf_fentry_test1") }}
	// FmodRet is probed on an LSM hook's security_ function, which every
	// kernel lets fmod_ret modify (others need error injection).
	FmodRet = &Feature{Name: "fmod_ret", MinVersion: "5.7",
		Config: []string{"CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS", "CONFIG_DEBUG_INFO_BTF", "CONFIG_SECURITY"}, Refusable: true,
		probe: func() error { return probeTracing(ebpf.Tracing, ebpf.AttachModifyReturn, "security_file_open") }}
	// BPFLSM also needs "bpf" among the active LSMs (lsm= on the command
	// line, or CONFIG_LSM).
	BPFLSM = &Feature{Name: "BPF LSM", MinVersion: "5.7",
		Config: []string{"CONFIG_BPF_LSM", "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS", "CONFIG_DEBUG_INFO_BTF"}, Refusable: true,
		probe: probeLSM}
)

// Features of the kernels between 5.10 (the oldest `make kernels` runs on,
// KERNELS=5.10) and 6.1, which everything above that needs less than 6.1
// takes for granted.
var (
	// PerfLink: tracepoints, kprobes and uprobes attached with a bpf_link
	// (BPF_PERF_EVENT), which can be pinned; before it, only a perf event
	// fd holds them.
	PerfLink = &Feature{Name: "perf_event bpf_links", MinVersion: "5.15", probe: probePerfLink}
	// TracingLinkInfo: a tracing link says what it is attached to
	// (target_obj_id, target_btf_id), and a pinned tracing program can be
	// attached again.
	TracingLinkInfo = &Feature{Name: "tracing link info with its target", MinVersion: "5.13",
		Config: Trampolines.Config, Refusable: true, probe: probeTracingLinkInfo}
	// XDPFrags: XDP programs for multi-buffer packets (SEC("xdp.frags")).
	XDPFrags = &Feature{Name: "XDP multi-buffer programs (xdp.frags)", MinVersion: "5.18", probe: probeXDPFrags}
	// UnprivilegedFDs: an unprivileged process may use the BPF fds it was
	// handed (read a map) while unprivileged_bpf_disabled is set; before
	// 5.19 that sysctl blocks every bpf() of it.
	UnprivilegedFDs = &Feature{Name: "bpf() on handed fds with unprivileged_bpf_disabled", MinVersion: "5.19", probe: probeUnprivilegedFDs}
)

// AllFeatures lists every feature, for the table test and the docs.
var AllFeatures = []*Feature{TCX, TCClsact, Netkit, XDPLink, NetfilterLink, UprobeMulti, KprobeMulti, Kprobes, Trampolines, FmodRet, BPFLSM,
	PerfLink, TracingLinkInfo, XDPFrags, UnprivilegedFDs}

// probePerfLink asks BPF_LINK_CREATE for a perf_event link on fd 0, which
// is no perf event: a kernel with such links answers EBADF, one without
// EINVAL (cilium/ebpf's probe, which it keeps internal).
func probePerfLink() error {
	prog, err := trivialProgram(ebpf.Kprobe, 0, "")
	if err != nil {
		return err
	}
	defer prog.Close()
	attr := struct{ progFD, targetFD, attachType, flags uint32 }{uint32(prog.FD()), 0, uint32(ebpf.AttachPerfEvent), 0}
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_LINK_CREATE, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	switch errno {
	case unix.EBADF:
		return nil
	case unix.EINVAL:
		return fmt.Errorf("BPF_LINK_CREATE of a perf event: %w", ebpf.ErrNotSupported)
	}
	return fmt.Errorf("probe perf_event links: %w", errno)
}

// probeTracingLinkInfo attaches a trivial fentry program and asks its
// link's info for the target.
func probeTracingLinkInfo() error {
	prog, err := trivialProgram(ebpf.Tracing, ebpf.AttachTraceFEntry, "bpf_fentry_test1")
	if err != nil {
		return fmt.Errorf("load fentry program: %w", err)
	}
	defer prog.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: prog})
	if err != nil {
		return fmt.Errorf("attach fentry program: %w", err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return err
	}
	if ti := info.Tracing(); ti == nil || ti.TargetBtfId == 0 {
		return fmt.Errorf("tracing link info names no target: %w", ebpf.ErrNotSupported)
	}
	return nil
}

// probeXDPFrags loads a trivial XDP program with BPF_F_XDP_HAS_FRAGS.
func probeXDPFrags() error {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Flags: unix.BPF_F_XDP_HAS_FRAGS,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()}})
	if errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("load an xdp.frags program: %w: %w", ebpf.ErrNotSupported, err)
	}
	if err != nil {
		return err
	}
	return prog.Close()
}

// probeUnprivilegedFDs: with unprivileged_bpf_disabled off, nothing is
// blocked; with it on, kernels before 5.19 refuse every bpf() of an
// unprivileged process (commit c8644cd0efe7 let the fds through). The
// version is what tells: a probe would have to drop privileges.
func probeUnprivilegedFDs() error {
	b, err := os.ReadFile("/proc/sys/kernel/unprivileged_bpf_disabled")
	if err != nil || strings.TrimSpace(string(b)) == "0" {
		return nil
	}
	if !KernelAtLeast("5.19") {
		return fmt.Errorf("unprivileged_bpf_disabled=%s blocks every bpf() of an unprivileged process before Linux 5.19: %w",
			strings.TrimSpace(string(b)), ebpf.ErrNotSupported)
	}
	return nil
}

// errRefused marks a probe error that says "present but refused here".
var errRefused = errors.New("refused by this kernel")

// Probe asks the running kernel, once per process: nil when it has the
// feature, an error wrapping ebpf.ErrNotSupported when it lacks it, one
// wrapping errRefused when it refuses it, another error when the probe
// itself failed.
func (f *Feature) Probe() error {
	f.once.Do(func() {
		err := f.probe()
		switch {
		case err == nil, errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, errRefused):
		case f.Refusable && (errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) ||
			errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.Errno(524))): // 524: ENOTSUPP
			err = fmt.Errorf("%w: %w", errRefused, err)
		}
		f.err = err
	})
	return f.err
}

// Missing returns why the running kernel lacks f, or "" when it has it. It
// fails tb instead when the kernel should have f: its version is at least
// MinVersion and its configuration (when it can be read) sets every option
// of Config; or f is refused inside the test VMs; or the probe failed.
func Missing(tb testing.TB, f *Feature) string {
	tb.Helper()
	RequireRoot(tb)
	err := f.Probe()
	if err == nil {
		return ""
	}
	release := KernelRelease()
	if errors.Is(err, errRefused) {
		if vm := os.Getenv("BPFSUP_TEST_VM"); vm != "" {
			tb.Fatalf("kernel %s (test VM %s) refuses %s, which it has: %v", release, vm, f.Name, err)
		}
		return fmt.Sprintf("kernel %s has %s but refuses it here: %v (the VMs of `make kernels` run this test)", release, f.Name, err)
	}
	if !errors.Is(err, ebpf.ErrNotSupported) {
		tb.Fatalf("probe %s: %v", f.Name, err)
	}
	old := !KernelAtLeast(f.MinVersion)
	var unset []string
	cfg, cfgErr := KernelConfig()
	if cfgErr == nil {
		for _, opt := range f.Config {
			if v := cfg[opt]; v != "y" && v != "m" {
				unset = append(unset, opt)
			}
		}
	}
	switch {
	case old:
		return fmt.Sprintf("kernel %s lacks %s (Linux %s+)", release, f.Name, f.MinVersion)
	case len(unset) > 0:
		return fmt.Sprintf("kernel %s lacks %s: built without %s", release, f.Name, strings.Join(unset, ", "))
	}
	tb.Fatalf("kernel %s is new enough for %s (Linux %s+) and built with %v, yet the probe says: %v",
		release, f.Name, f.MinVersion, f.Config, err)
	return ""
}

// SkipWithout skips tb, saying why, when the running kernel lacks f; see
// Missing for when it fails tb instead.
func SkipWithout(tb testing.TB, f *Feature) {
	tb.Helper()
	if why := Missing(tb, f); why != "" {
		tb.Skip(why)
	}
}

// minVersionInError finds cilium/ebpf's "(requires >= v5.7)" in an error.
var minVersionInError = regexp.MustCompile(`requires >= v?(\d+\.\d+)`)

// SkipIfNotSupported skips tb when err says the kernel lacks a feature
// (ebpf.ErrNotSupported), and fails it when the error names a minimum
// version the running kernel meets. Other errors, and nil, are left to the
// caller.
func SkipIfNotSupported(tb testing.TB, err error) {
	tb.Helper()
	if !errors.Is(err, ebpf.ErrNotSupported) {
		return
	}
	if m := minVersionInError.FindStringSubmatch(err.Error()); m != nil && KernelAtLeast(m[1]) {
		tb.Fatalf("kernel %s is new enough (Linux %s+), yet: %v", KernelRelease(), m[1], err)
	}
	tb.Skipf("kernel %s: %v", KernelRelease(), err)
}

// KernelRelease is the running kernel's release (uname -r).
func KernelRelease() string {
	var uts unix.Utsname
	if err := unix.Uname(&uts); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(uts.Release[:])
}

// KernelVersion is the running kernel's version, from its release:
// "6.1.0-56-cloud-amd64" is [6 1 0].
func KernelVersion() [3]int {
	return parseVersion(KernelRelease())
}

var versionRe = regexp.MustCompile(`^(\d+)\.(\d+)(?:\.(\d+))?`)

func parseVersion(s string) [3]int {
	var v [3]int
	m := versionRe.FindStringSubmatch(s)
	if m == nil {
		return v
	}
	for i := 0; i < 3; i++ {
		v[i], _ = strconv.Atoi(m[i+1])
	}
	return v
}

// KernelAtLeast reports whether the running kernel is version min
// ("major.minor[.patch]") or newer.
func KernelAtLeast(min string) bool {
	have, want := KernelVersion(), parseVersion(min)
	for i := range have {
		if have[i] != want[i] {
			return have[i] > want[i]
		}
	}
	return true
}

var (
	configOnce sync.Once
	config     map[string]string
	configErr  error
)

// KernelConfig is the running kernel's build configuration, from
// /proc/config.gz or /boot/config-RELEASE: option -> "y", "m", a value.
func KernelConfig() (map[string]string, error) {
	configOnce.Do(func() {
		var r io.Reader
		if f, err := os.Open("/proc/config.gz"); err == nil {
			defer f.Close()
			zr, err := gzip.NewReader(f)
			if err != nil {
				configErr = fmt.Errorf("read /proc/config.gz: %w", err)
				return
			}
			r = zr
		} else if f, err := os.Open("/boot/config-" + KernelRelease()); err == nil {
			defer f.Close()
			r = f
		} else {
			configErr = fmt.Errorf("no kernel configuration in /proc/config.gz or /boot/config-%s", KernelRelease())
			return
		}
		config = map[string]string{}
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), "="); ok && strings.HasPrefix(k, "CONFIG_") {
				config[k] = strings.Trim(v, `"`)
			}
		}
		configErr = sc.Err()
	})
	return config, configErr
}

// InVM reports whether the test runs inside a VM of `make kernels`, and
// which kernel's ("6.1").
func InVM() (string, bool) {
	vm := os.Getenv("BPFSUP_TEST_VM")
	return vm, vm != ""
}

// RequireTool returns the path of the program name. Missing, it skips the
// test inside the VMs of `make kernels`, which carry no such tools (Python,
// systemd), and fails it elsewhere, where CI installs them.
func RequireTool(tb testing.TB, name string) string {
	tb.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if vm, ok := InVM(); ok {
		tb.Skipf("%s is not in the test VM (kernel %s): this test runs on the host only", name, vm)
	}
	tb.Fatalf("%s is needed and not installed: %v", name, err)
	return ""
}

func trivialProgram(typ ebpf.ProgramType, attach ebpf.AttachType, attachTo string) (*ebpf.Program, error) {
	return ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         typ,
		AttachType:   attach,
		AttachTo:     attachTo,
		License:      "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
}

// probeTCX attaches to an interface that does not exist: a kernel with tcx
// answers ENODEV, one without refuses the attach type.
func probeTCX() error {
	prog, err := trivialProgram(ebpf.SchedCLS, 0, "")
	if err != nil {
		return err
	}
	defer prog.Close()
	l, err := link.AttachTCX(link.TCXOptions{Program: prog, Attach: ebpf.AttachTCXIngress, Interface: math.MaxInt32})
	if err == nil {
		l.Close()
		return nil
	}
	if errors.Is(err, ebpf.ErrNotSupported) {
		return err
	}
	return nil
}

// probeXDPLink attaches an XDP link to the loopback interface of a network
// namespace made for the probe: a kernel without XDP links refuses the attach
// type (an interface that does not exist would be EINVAL either way).
func probeXDPLink() error {
	prog, err := trivialProgram(ebpf.XDP, ebpf.AttachXDP, "")
	if err != nil {
		return err
	}
	defer prog.Close()
	errc := make(chan error, 1)
	go func() {
		// The thread never leaves the probe's namespace: locked, it ends
		// with the goroutine. The namespace goes with it.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("probe xdp link: new network namespace: %w", err)
			return
		}
		lo, err := net.InterfaceByName("lo")
		if err != nil {
			errc <- fmt.Errorf("probe xdp link: %w", err)
			return
		}
		l, err := link.AttachRawLink(link.RawLinkOptions{Program: prog, Attach: ebpf.AttachXDP, Target: lo.Index})
		if err != nil {
			errc <- err
			return
		}
		errc <- l.Close()
	}()
	err = <-errc
	if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("xdp link: %w: %w", ebpf.ErrNotSupported, err)
	}
	return err
}

func probeNetkit() error {
	prog, err := trivialProgram(ebpf.SchedCLS, 0, "")
	if err != nil {
		return err
	}
	defer prog.Close()
	l, err := link.AttachNetkit(link.NetkitOptions{Program: prog, Attach: ebpf.AttachNetkitPrimary, Interface: math.MaxInt32})
	if err == nil {
		l.Close()
		return nil
	}
	if errors.Is(err, ebpf.ErrNotSupported) {
		return err
	}
	return nil
}

// probeKprobes attaches a kprobe to a function every kernel has.
func probeKprobes() error {
	prog, err := trivialProgram(ebpf.Kprobe, 0, "")
	if err != nil {
		return err
	}
	defer prog.Close()
	l, err := link.Kprobe("do_sys_openat2", prog, nil)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("kprobe: %w: %w", ebpf.ErrNotSupported, err)
		}
		return err
	}
	return l.Close()
}

// probeTracing loads and attaches a trivial tracing program to fn, one of
// the functions the kernel keeps for BPF's own tests.
func probeTracing(typ ebpf.ProgramType, attach ebpf.AttachType, fn string) error {
	prog, err := trivialProgram(typ, attach, fn)
	if err != nil {
		return fmt.Errorf("load %s program on %s: %w", attach, fn, err)
	}
	defer prog.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: prog})
	if err != nil {
		return fmt.Errorf("attach %s program to %s: %w", attach, fn, err)
	}
	return l.Close()
}

// probeLSM checks that "bpf" is an active LSM, then loads and attaches a
// trivial program on file_open: with the LSM inactive, attaching works but
// the program would never run.
func probeLSM() error {
	if !lsmActive("bpf") {
		return fmt.Errorf("bpf is not among the active LSMs (boot with lsm=...,bpf): %w", ebpf.ErrNotSupported)
	}
	prog, err := trivialProgram(ebpf.LSM, ebpf.AttachLSMMac, "file_open")
	if err != nil {
		return fmt.Errorf("load lsm program: %w", err)
	}
	defer prog.Close()
	l, err := link.AttachLSM(link.LSMOptions{Program: prog})
	if err != nil {
		return fmt.Errorf("attach lsm program: %w", err)
	}
	return l.Close()
}

// lsmActive reports whether name is an active LSM: the list in securityfs
// when it is mounted, else lsm= on the command line, else CONFIG_LSM.
func lsmActive(name string) bool {
	list := ""
	if b, err := os.ReadFile("/sys/kernel/security/lsm"); err == nil {
		list = string(b)
	} else if cmdline, err := os.ReadFile("/proc/cmdline"); err == nil {
		for _, f := range strings.Fields(string(cmdline)) {
			if v, ok := strings.CutPrefix(f, "lsm="); ok {
				list = v
			}
		}
		if list == "" {
			if cfg, err := KernelConfig(); err == nil {
				list = cfg["CONFIG_LSM"]
			}
		}
	}
	for _, l := range strings.Split(strings.TrimSpace(list), ",") {
		if l == name {
			return true
		}
	}
	return false
}
