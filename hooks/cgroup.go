package hooks

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// cgroupVariant is one cgroup attach type: the variant's name in a hook spec
// ("cgroup/connect4"), the kernel's attach type and the program type it takes.
type cgroupVariant struct {
	attach ebpf.AttachType
	prog   ebpf.ProgramType
}

// cgroupVariants maps the variants of the cgroup hook to attach types. The
// names follow libbpf's section names ("cgroup/connect4"), except the skb
// directions ("cgroup_skb/ingress" there), device ("cgroup/dev") and sockops
// ("sockops"), which say what they are.
var cgroupVariants = map[string]cgroupVariant{
	"ingress":          {ebpf.AttachCGroupInetIngress, ebpf.CGroupSKB},
	"egress":           {ebpf.AttachCGroupInetEgress, ebpf.CGroupSKB},
	"sock_create":      {ebpf.AttachCGroupInetSockCreate, ebpf.CGroupSock},
	"sock_release":     {ebpf.AttachCgroupInetSockRelease, ebpf.CGroupSock},
	"post_bind4":       {ebpf.AttachCGroupInet4PostBind, ebpf.CGroupSock},
	"post_bind6":       {ebpf.AttachCGroupInet6PostBind, ebpf.CGroupSock},
	"bind4":            {ebpf.AttachCGroupInet4Bind, ebpf.CGroupSockAddr},
	"bind6":            {ebpf.AttachCGroupInet6Bind, ebpf.CGroupSockAddr},
	"connect4":         {ebpf.AttachCGroupInet4Connect, ebpf.CGroupSockAddr},
	"connect6":         {ebpf.AttachCGroupInet6Connect, ebpf.CGroupSockAddr},
	"connect_unix":     {ebpf.AttachCgroupUnixConnect, ebpf.CGroupSockAddr},
	"sendmsg4":         {ebpf.AttachCGroupUDP4Sendmsg, ebpf.CGroupSockAddr},
	"sendmsg6":         {ebpf.AttachCGroupUDP6Sendmsg, ebpf.CGroupSockAddr},
	"sendmsg_unix":     {ebpf.AttachCgroupUnixSendmsg, ebpf.CGroupSockAddr},
	"recvmsg4":         {ebpf.AttachCGroupUDP4Recvmsg, ebpf.CGroupSockAddr},
	"recvmsg6":         {ebpf.AttachCGroupUDP6Recvmsg, ebpf.CGroupSockAddr},
	"recvmsg_unix":     {ebpf.AttachCgroupUnixRecvmsg, ebpf.CGroupSockAddr},
	"getpeername4":     {ebpf.AttachCgroupInet4GetPeername, ebpf.CGroupSockAddr},
	"getpeername6":     {ebpf.AttachCgroupInet6GetPeername, ebpf.CGroupSockAddr},
	"getpeername_unix": {ebpf.AttachCgroupUnixGetpeername, ebpf.CGroupSockAddr},
	"getsockname4":     {ebpf.AttachCgroupInet4GetSockname, ebpf.CGroupSockAddr},
	"getsockname6":     {ebpf.AttachCgroupInet6GetSockname, ebpf.CGroupSockAddr},
	"getsockname_unix": {ebpf.AttachCgroupUnixGetsockname, ebpf.CGroupSockAddr},
	"getsockopt":       {ebpf.AttachCGroupGetsockopt, ebpf.CGroupSockopt},
	"setsockopt":       {ebpf.AttachCGroupSetsockopt, ebpf.CGroupSockopt},
	"sysctl":           {ebpf.AttachCGroupSysctl, ebpf.CGroupSysctl},
	"sockops":          {ebpf.AttachCGroupSockOps, ebpf.SockOps},
	"device":           {ebpf.AttachCGroupDevice, ebpf.CGroupDevice},
}

func init() {
	variants := make([]string, 0, len(cgroupVariants))
	for v := range cgroupVariants {
		variants = append(variants, v)
	}
	sort.Strings(variants)
	register("cgroup", kind{
		variants:    variants,
		needsTarget: true,
		make: func(s Spec) (Hook, error) {
			if !filepath.IsAbs(s.Target) {
				return nil, fmt.Errorf("hook %q: want an absolute path to a cgroup v2 directory: %w", s, ErrBadSpec)
			}
			return &cgroupHook{spec: s, v: cgroupVariants[s.Variant]}, nil
		},
		check: func(s Spec) error { _, err := cgroupID(s.Target); return err },
	})
}

// cgroupHook attaches a program to a cgroup v2 directory with a cgroup
// bpf_link (BPF_F_ALLOW_MULTI semantics: other programs on the cgroup stay).
// The link can swap its program in place. A link whose cgroup was removed
// stays alive but defunct: its info reports cgroup id 0.
type cgroupHook struct {
	spec Spec
	v    cgroupVariant
}

func (h *cgroupHook) Spec() Spec        { return h.spec }
func (h *cgroupHook) Updatable() bool   { return true }
func (h *cgroupHook) Mechanism() string { return "bpf_link cgroup (" + h.spec.Variant + ")" }

// prepare checks the program type and sets the expected attach type, which
// the kernel wants at load time, where the section left it open. A program
// built for another attach type (section "cgroup/connect6" for
// cgroup/connect4) is refused here rather than by the kernel. cgroup skb
// programs take either direction whatever their section says, and the
// kernel's "none" is the ingress attach type, so they are left alone.
func (h *cgroupHook) prepare(name string, ps *ebpf.ProgramSpec) error {
	if ps.Type != h.v.prog {
		return fmt.Errorf("hook %s needs a program of type %s; program %s (section %q) is %s: %w",
			h.spec, h.v.prog, name, ps.SectionName, ps.Type, ErrWrongProgramType)
	}
	if h.v.prog == ebpf.CGroupSKB {
		return nil
	}
	if ps.AttachType != ebpf.AttachNone && ps.AttachType != h.v.attach {
		return fmt.Errorf("hook %s: program %s (section %q) is built for attach type %s, not %s: %w",
			h.spec, name, ps.SectionName, ps.AttachType, h.v.attach, ErrWrongProgramType)
	}
	ps.AttachType = h.v.attach
	return nil
}

func (h *cgroupHook) Attach(prog *ebpf.Program) (Attachment, error) {
	if err := checkType(h.spec, prog, h.v.prog); err != nil {
		return nil, err
	}
	if _, err := cgroupID(h.spec.Target); err != nil {
		return nil, fmt.Errorf("attach %s: %w", h.spec, err)
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: h.spec.Target, Attach: h.v.attach, Program: prog})
	if err != nil {
		return nil, fmt.Errorf("attach %s: %w", h.spec, err)
	}
	// Before Linux 5.7 cilium/ebpf falls back to BPF_PROG_ATTACH, which
	// makes no link and cannot be pinned: refuse it rather than fail later.
	if _, isLink := l.(interface{ FD() int }); !isLink {
		l.Close()
		return nil, fmt.Errorf("attach %s: the kernel has no cgroup bpf_link (Linux 5.7+), which a pinned attachment needs: %w", h.spec, ErrNotSupported)
	}
	return attached(l), nil
}

func (h *cgroupHook) Check(a Attachment) (State, error) {
	info, err := linkInfoOf(a)
	if err != nil || info == nil {
		return Elsewhere, err
	}
	ci := info.Cgroup()
	if info.Type != link.CgroupType || ci == nil || ebpf.AttachType(ci.AttachType) != h.v.attach {
		return Elsewhere, nil
	}
	if ci.CgroupId == 0 {
		return Defunct, nil
	}
	id, err := cgroupID(h.spec.Target)
	if err != nil || id != ci.CgroupId {
		// The link is on a cgroup, but ours is gone or another one.
		return Elsewhere, nil
	}
	return Attached, nil
}

// cgroupID returns the id of the cgroup v2 directory at path: the kernel's
// cgroup id, which a cgroup link's info reports, is the directory's file
// handle. A path that is missing or not on cgroup2 is an error that says so.
func cgroupID(path string) (uint64, error) {
	if !filepath.IsAbs(path) {
		return 0, fmt.Errorf("cgroup %q: want an absolute path to a cgroup v2 directory: %w", path, ErrBadSpec)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, fmt.Errorf("cgroup %s: %w", path, ErrTargetNotFound)
		}
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("cgroup %s is not on cgroup2 (cgroup v2 is mounted at %s): %w", path, cgroup2Mount(), ErrBadSpec)
	}
	fh, _, err := unix.NameToHandleAt(unix.AT_FDCWD, path, 0)
	if err != nil {
		return 0, fmt.Errorf("cgroup %s: file handle: %w", path, err)
	}
	b := fh.Bytes()
	if len(b) != 8 {
		return 0, fmt.Errorf("cgroup %s: file handle of %d bytes, want 8", path, len(b))
	}
	return binary.NativeEndian.Uint64(b), nil
}

// cgroup2Mount finds where cgroup v2 is mounted, for error messages.
func cgroup2Mount() string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "an unknown place"
	}
	if m := findMount(string(data), "cgroup2"); m != "" {
		return m
	}
	return "no place: it is not mounted"
}

// findMount returns the mount point of the first mount of filesystem type
// fstype in a /proc/PID/mountinfo text, or "".
func findMount(mountinfo, fstype string) string {
	for _, line := range strings.Split(mountinfo, "\n") {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		f, p := strings.Fields(pre), strings.Fields(post)
		if len(f) >= 5 && len(p) >= 1 && p[0] == fstype {
			return f[4]
		}
	}
	return ""
}
