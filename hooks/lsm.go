package hooks

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

func init() {
	register("lsm", kind{
		variants:    []string{""},
		needsTarget: true,
		make: func(s Spec) (Hook, error) {
			if !traceName(s.Target) || strings.HasPrefix(s.Target, "bpf_lsm_") {
				return nil, fmt.Errorf("hook %q: want lsm:HOOK, an LSM hook name such as file_open: %w", s, ErrBadSpec)
			}
			return &lsmHook{spec: s}, nil
		},
	})
}

// lsmHook attaches an LSM program to an LSM hook (bpf_lsm_<HOOK>) with a
// tracing bpf_link, through a BPF trampoline. The hook is bound at load
// time, as for fentry. Only where the BPF LSM is active (its name is in
// /sys/kernel/security/lsm) do such programs run: elsewhere they load and
// attach but never fire, so prepare refuses them. Upgrades are
// make-before-break.
type lsmHook struct{ spec Spec }

func (h *lsmHook) Spec() Spec        { return h.spec }
func (h *lsmHook) Updatable() bool   { return false }
func (h *lsmHook) Mechanism() string { return "bpf_link tracing (lsm)" }

func (h *lsmHook) prepare(name string, ps *ebpf.ProgramSpec) error {
	if err := bindAtLoad(h.spec, name, ps, ebpf.LSM, ebpf.AttachLSMMac, h.spec.Target); err != nil {
		return err
	}
	if err := bpfLSMActive(); err != nil {
		return fmt.Errorf("hook %s: %w", h.spec, err)
	}
	return probeTrampoline(h.spec, ebpf.LSM, ebpf.AttachLSMMac, h.spec.Target)
}

func (h *lsmHook) Attach(prog *ebpf.Program) (Attachment, error) {
	if err := checkType(h.spec, prog, ebpf.LSM); err != nil {
		return nil, err
	}
	l, err := link.AttachLSM(link.LSMOptions{Program: prog})
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", h.spec, trampolineError(err))
	}
	if err := mustSayTarget(l); err != nil {
		return nil, fmt.Errorf("attach %s: %w", h.spec, err)
	}
	return attached(l), nil
}

func (h *lsmHook) Check(a Attachment) (State, error) {
	return checkTracing(a, ebpf.AttachLSMMac, "bpf_lsm_"+h.spec.Target)
}

// bpfLSMActive returns nil when "bpf" is among the active LSMs, and an error
// that says so plainly otherwise. The list is in securityfs; where securityfs
// is not mounted, it is mounted for a moment on a private directory to read
// it.
func bpfLSMActive() error {
	lsmOnce.Do(func() { lsmList, lsmErr = readLSMList() })
	list, err := lsmList, lsmErr
	if err != nil {
		return fmt.Errorf("cannot tell whether the BPF LSM is active: %w", err)
	}
	for _, name := range strings.Split(strings.TrimSpace(list), ",") {
		if name == "bpf" {
			return nil
		}
	}
	return fmt.Errorf("the BPF LSM is not active (active LSMs: %s): lsm programs would load but never run; boot with lsm=%s,bpf (CONFIG_BPF_LSM=y): %w",
		strings.TrimSpace(list), strings.TrimSpace(list), ErrNotSupported)
}

// The active LSMs are chosen at boot: read them once.
var (
	lsmOnce sync.Once
	lsmList string
	lsmErr  error
)

func readLSMList() (string, error) {
	if b, err := os.ReadFile("/sys/kernel/security/lsm"); err == nil {
		return string(b), nil
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		if m := findMount(string(mi), "securityfs"); m != "" {
			if b, err := os.ReadFile(filepath.Join(m, "lsm")); err == nil {
				return string(b), nil
			}
		}
	}
	dir, err := os.MkdirTemp("", "bpfsup-securityfs-")
	if err != nil {
		return "", err
	}
	defer os.Remove(dir)
	if err := unix.Mount("securityfs", dir, "securityfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC|unix.MS_RDONLY, ""); err != nil {
		return "", fmt.Errorf("securityfs is not mounted and mounting it failed: %w", err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	b, err := os.ReadFile(filepath.Join(dir, "lsm"))
	if err != nil {
		return "", fmt.Errorf("read the LSM list from securityfs: %w", err)
	}
	return string(b), nil
}
