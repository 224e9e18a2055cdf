package hooks

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

func TestParseLSM(t *testing.T) {
	for in, wantErr := range map[string]bool{
		"lsm:file_open":          false,
		"lsm:bpf_lsm_file_open":  true, // the hook's name, not its BPF stub
		"lsm:file open":          true,
		"lsm:security/file_open": true,
	} {
		s, err := Parse(in)
		if err != nil {
			t.Fatal(err)
		}
		_, err = New(s)
		if got := errors.Is(err, ErrBadSpec); got != wantErr {
			t.Errorf("New(%s) = %v, want ErrBadSpec: %v", in, err, wantErr)
		}
	}
}

// bpfLSMActive agrees with the kernel's list of active LSMs, read here from
// securityfs where it is mounted, and reads it itself where it is not.
func TestBPFLSMActive(t *testing.T) {
	err := bpfLSMActive()
	list, rerr := os.ReadFile("/sys/kernel/security/lsm")
	if rerr != nil {
		// Not mounted here: bpfLSMActive had to mount it for a moment.
		if err != nil && strings.Contains(err.Error(), "cannot tell") {
			t.Fatalf("bpfLSMActive without securityfs mounted: %v", err)
		}
		t.Logf("securityfs not mounted at /sys/kernel/security; bpfLSMActive: %v", err)
		return
	}
	active := false
	for _, name := range strings.Split(strings.TrimSpace(string(list)), ",") {
		active = active || name == "bpf"
	}
	if active != (err == nil) {
		t.Fatalf("LSMs %q; bpfLSMActive = %v", list, err)
	}
	if err != nil && !errors.Is(err, ErrNotSupported) {
		t.Fatalf("inactive BPF LSM: %v, want ErrNotSupported", err)
	}
}

func TestLSMHook(t *testing.T) {
	refused := trampolinesRefusedHere(t)
	h := mustHook(t, "lsm:file_open", "")
	if h.Updatable() {
		t.Error("lsm: Updatable() = true")
	}
	if err := bpfLSMActive(); err != nil {
		spec, lerr := ebpf.LoadCollectionSpec(testutil.BPFObject("lsm"))
		if lerr != nil {
			t.Fatal(lerr)
		}
		if perr := Prepare(h, "lsm_count", spec.Programs["lsm_count"]); !errors.Is(perr, ErrNotSupported) || !strings.Contains(perr.Error(), "BPF LSM is not active") {
			t.Fatalf("Prepare with the BPF LSM inactive: %v, want ErrNotSupported saying so", perr)
		}
		t.Skipf("the BPF LSM is not active: %v", err)
	}
	if refused {
		spec, err := ebpf.LoadCollectionSpec(testutil.BPFObject("lsm"))
		if err != nil {
			t.Fatal(err)
		}
		if err := Prepare(h, "lsm_count", spec.Programs["lsm_count"]); !errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "refuses BPF trampolines") {
			t.Fatalf("Prepare on a kernel that refuses trampolines: %v, want ErrNotSupported saying so", err)
		}
		t.Skip("this kernel refuses BPF trampolines (EPERM loading a trivial fentry program): checked that the hook says so")
	}
	prog, maps := mustTracingProgram(t, "lsm", "lsm_count", h)
	if err := maps["config"].Put(uint32(0), uint32(unix.Getpid())); err != nil {
		t.Fatal(err)
	}
	refusedWithout(t, testutil.TracingLinkInfo, h, prog, "(Linux 5.13+)")
	l := mustAttach(t, h, prog)
	wantState(t, h, l, Attached)
	wantState(t, mustHook(t, "lsm:file_permission", ""), l, Elsewhere)
	wantState(t, mustHook(t, "fentry:bpf_lsm_file_open", ""), l, Elsewhere)
	before := readHits(t, maps["hits"], 3)
	openDevNull()
	if after := readHits(t, maps["hits"], 3); after <= before {
		t.Fatalf("lsm program did not fire (%d -> %d)", before, after)
	}
	next, _ := mustTracingProgram(t, "lsm_v2", "lsm_count", h)
	testNotUpdatable(t, h, l, next)
}
