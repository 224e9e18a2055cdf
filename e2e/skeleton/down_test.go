package skeleton

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// `bpfsup down` detaches and unpins: afterwards no pin, no attached program,
// no link, no lock or manifest remains, whether the supervisor stopped
// cleanly or was killed.
func TestDown(t *testing.T) {
	for _, stop := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		t.Run(stop.String(), func(t *testing.T) {
			r := newCounterRig(t)
			before := r.ids(t)
			requireAttached(t, r.ifB, before.link, before.countPackets)

			// Not while a supervisor holds the object.
			out, code := r.env.Run(t, "down")
			if code == 0 || !strings.Contains(out, "counter") || !strings.Contains(out, "locked") {
				t.Fatalf("bpfsup down with a supervisor running: exit %d, want an error naming the object and the lock:\n%s", code, out)
			}
			requireAttached(t, r.ifB, before.link, before.countPackets)

			// Nor given another state directory, where the lock file of
			// the running supervisor is not: the pins are locked too.
			other := t.TempDir()
			out, code = r.env.Run(t, "down", "--state-dir", other)
			if code == 0 || !strings.Contains(out, "counter") || !strings.Contains(out, "held by pid "+strconv.Itoa(r.sup.Pid())) {
				t.Fatalf("bpfsup down with another state directory: exit %d, want an error naming the object and the supervisor's pid %d:\n%s", code, r.sup.Pid(), out)
			}
			out, code = r.env.Run(t, "run", "--state-dir", other, "-o", testutil.BPFObject("counter"), "--", "/bin/true")
			if code == 0 || !strings.Contains(out, "held by pid "+strconv.Itoa(r.sup.Pid())) {
				t.Fatalf("a second bpfsup run with another state directory: exit %d, want it refused:\n%s", code, out)
			}
			requireAttached(t, r.ifB, before.link, before.countPackets)

			r.sup.Kill(stop)
			<-r.sup.Done()
			testutil.WaitProcGone(t, r.child.pid, waitTimeout)
			requireAttached(t, r.ifB, before.link, before.countPackets)

			out, code = r.env.Run(t, "down")
			if code != 0 {
				t.Fatalf("bpfsup down: exit %d\n%s", code, out)
			}
			if left := dirEntries(t, r.env.PinRoot); len(left) > 0 {
				t.Errorf("left under the pin root: %v", left)
			}
			for _, name := range dirEntries(t, r.env.StateDir) {
				if strings.HasPrefix(name, "counter.") {
					t.Errorf("left in the state directory: %s", filepath.Join(r.env.StateDir, name))
				}
			}
			// The kernel frees a link and its programs once the last
			// reference is gone, a little later than the unpinning.
			testutil.WaitFor(t, waitTimeout, "the link, the programs and the map to be freed", func() bool {
				return gone(link.NewFromID(link.ID(before.link))) &&
					gone(ebpf.NewProgramFromID(ebpf.ProgramID(before.countPackets))) &&
					gone(ebpf.NewProgramFromID(ebpf.ProgramID(before.countTC))) &&
					gone(ebpf.NewMapFromID(ebpf.MapID(before.counters)))
			})
			if id := ipXDPProgram(t, r.ifB.Netns, r.ifB.Name); id != 0 {
				t.Errorf("ip link shows XDP program %d on %s after down", id, r.ifB.Name)
			}
			if got := netAttachments(t, r.ifB.Netns, r.ifB.Name); len(got) > 0 {
				t.Errorf("bpftool net shows %v on %s after down", got, r.ifB.Name)
			}
			if out, err := exec.Command("bpftool", "link", "show", "id", strconv.FormatUint(uint64(before.link), 10)).CombinedOutput(); err == nil {
				t.Errorf("bpftool still shows link %d:\n%s", before.link, out)
			}
			if st := status(t, r.env); len(st.Objects) != 0 {
				t.Errorf("status after down: %+v", st.Objects)
			}
		})
	}
}

// gone reports whether opening a kernel object by id found nothing; it
// closes what it did find.
func gone[T interface{ Close() error }](obj T, err error) bool {
	if err == nil {
		obj.Close()
		return false
	}
	return errors.Is(err, os.ErrNotExist)
}
