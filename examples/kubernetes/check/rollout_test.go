package check

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// The DaemonSet's container, run by podman as its pod template says, on a
// node of the test's making, with UDP traffic to a dropped and to an open
// port throughout: killed and restarted, rolled to a new image and back, a
// second one at once, a new image the verifier refuses, and removed for good.
// Not one datagram reaches the dropped port until the removal Job runs, and
// the link, its maps and their contents are kept throughout.
func TestPodmanPod(t *testing.T) {
	r := newRig(t)
	v1 := baseImage(t)
	v2 := buildVariant(t, v1, "dropfilter_v2")
	bad := buildVariant(t, v1, "dropfilter_bad")

	pod := r.start(t, v1)
	r.ready(t, pod)
	e2e.PutPinned(t, filepath.Join(r.pins, "dropfilter/maps/drop_ports"), uint16(r.dropped.Port()), uint8(1))
	r.startTraffic()
	r.filtering(t, "after the first start")
	want := "/sys/fs/bpf (root /" + filepath.Base(filepath.Dir(r.pins)) + ")"
	if m := bpffsMounts(t, pod); len(m) != 1 || m[0] != want {
		t.Fatalf("bpf mounts in the container: %q, want only the node's, %s", m, want)
	}
	before := r.read(t)
	if before.droppedSoFar == 0 {
		t.Fatal("drop_count is 0 with traffic to the dropped port")
	}

	before = r.killed(t, pod, before)
	for _, image := range []string{v2, v1} {
		pod, before = r.rolled(t, pod, image, before)
	}
	r.surged(t, v1, pod, before)
	pod = r.refused(t, pod, bad, v1, before)
	r.removed(t, pod, v1, before)
}

// killed SIGKILLs the container and starts it again, as the kubelet does:
// the new bpfsup adopts everything, the program included.
func (r *rig) killed(t *testing.T, pod string, before pinned) pinned {
	t.Helper()
	t0 := time.Now()
	if _, err := podman("kill", "--signal", "KILL", pod); err != nil {
		t.Fatal(err)
	}
	exitCode(t, pod)
	if _, err := podman("start", pod); err != nil {
		t.Fatal(err)
	}
	r.ready(t, pod)
	t.Logf("container SIGKILLed, started again, adopted and ready: %v", time.Since(t0).Round(time.Millisecond))
	if got := lastInstall(t, pod); got != "adopted=4 loaded=0" {
		t.Errorf("after SIGKILL: %s, want adopted=4 loaded=0", got)
	}
	now := r.read(t)
	if !kept(t, "after SIGKILL", before, now) {
		t.Errorf("after SIGKILL: program %d, want %d (adopted)", now.prog, before.prog)
	}
	r.filtering(t, "after SIGKILL")
	return now
}

// rolled replaces the container by one from image, as a rolling update with
// maxSurge 0 does (the old one stopped with SIGTERM and its grace period,
// then the new one started): the link is updated in place to the new
// program, with the maps and their contents.
func (r *rig) rolled(t *testing.T, pod, image string, before pinned) (string, pinned) {
	t.Helper()
	t0 := time.Now()
	if _, err := podman("stop", pod); err != nil {
		t.Fatal(err)
	}
	if _, err := podman("rm", pod); err != nil {
		t.Fatal(err)
	}
	pod = r.start(t, image)
	r.ready(t, pod)
	t.Logf("rolled to %s: SIGTERM of the old container to the new one ready: %v", image, time.Since(t0).Round(time.Millisecond))
	now := r.read(t)
	if kept(t, "rolled to "+image, before, now) {
		t.Errorf("rolled to %s: xdp_drop is still program %d", image, now.prog)
	}
	if p := uint32(e2e.PinnedProgramID(t, filepath.Join(r.pins, "dropfilter/programs/xdp_drop"))); p != now.prog {
		t.Errorf("rolled to %s: the link runs program %d, the pin holds %d", image, now.prog, p)
	}
	r.filtering(t, "rolled to "+image)
	return pod, now
}

// surged starts a second container beside the first, as a surge would: it
// is refused with an error naming the holder, and the first keeps serving.
func (r *rig) surged(t *testing.T, image, pod string, before pinned) {
	t.Helper()
	second := r.start(t, image)
	if code := exitCode(t, second); code == 0 {
		t.Errorf("a second container beside %s exited 0", pod)
	}
	logs, _ := podman("logs", second)
	if !strings.Contains(logs, "held by") {
		t.Errorf("the second container does not say who holds the objects:\n%s", logs)
	}
	r.ready(t, pod)
	if !kept(t, "beside a second container", before, r.read(t)) {
		t.Error("a second container changed the program")
	}
	r.filtering(t, "beside a second container")
}

// refused rolls to an image whose object the verifier refuses: the new
// container fails and says why, the old programs stay attached and
// filtering. It then rolls back to good, which adopts them.
func (r *rig) refused(t *testing.T, pod, bad, good string, before pinned) string {
	t.Helper()
	if _, err := podman("stop", pod); err != nil {
		t.Fatal(err)
	}
	if _, err := podman("rm", pod); err != nil {
		t.Fatal(err)
	}
	failed := r.start(t, bad)
	if code := exitCode(t, failed); code == 0 {
		t.Error("the container of the image the verifier refuses exited 0")
	}
	logs, _ := podman("logs", failed)
	if !strings.Contains(logs, "verifier") {
		t.Errorf("the failed container does not say the verifier refused:\n%s", logs)
	}
	if !kept(t, "after the refused image", before, r.read(t)) {
		t.Error("the refused image changed the program")
	}
	r.filtering(t, "after the refused image")
	pod = r.start(t, good)
	r.ready(t, pod)
	if got := lastInstall(t, pod); got != "adopted=4 loaded=0" {
		t.Errorf("rolled back: %s, want adopted=4 loaded=0", got)
	}
	r.filtering(t, "rolled back")
	return pod
}

// removed deletes the pod for good: the programs stay attached and
// filtering; the removal Job's container detaches them.
func (r *rig) removed(t *testing.T, pod, image string, before pinned) {
	t.Helper()
	if _, err := podman("stop", pod); err != nil {
		t.Fatal(err)
	}
	if _, err := podman("rm", pod); err != nil {
		t.Fatal(err)
	}
	r.filtering(t, "with the pod deleted")
	if !kept(t, "with the pod deleted", before, r.read(t)) {
		t.Error("deleting the pod changed the program")
	}
	spec := &r.ex.Down.Spec.Template.Spec
	r.seq++
	name := r.base + "-down"
	args, err := PodmanRun(spec, spec.Containers[0].Name, name, image, r.node)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = podman("rm", "--force", name) })
	out, err := podman(append([]string{"run"}, args...)...)
	if err != nil {
		t.Fatalf("the removal Job: %v", err)
	}
	t.Logf("the removal Job: %s", strings.TrimSpace(out))
	testutil.WaitFor(t, startTimeout, "xdp_drop's link to go", func() bool { return e2e.LinkGone(link.ID(before.link)) })
	r.dropped.WaitCount(t, 1, startTimeout)
}

// The DaemonSet's capabilities are the fewest that work: without any one of
// them, the container fails to install its objects and leaves nothing
// attached; with all of them, it is ready.
func TestPodmanFewestCapabilities(t *testing.T) {
	r := newRig(t)
	image := baseImage(t)
	spec := r.ex.DaemonSet.Spec.Template.Spec.DeepCopy()
	caps := spec.Containers[0].SecurityContext.Capabilities.Add
	if len(caps) == 0 {
		t.Fatal("the DaemonSet's container adds no capabilities")
	}
	for i, c := range caps {
		r.seq++
		name := fmt.Sprintf("%s-%d", r.base, r.seq)
		spec.Containers[0].SecurityContext.Capabilities.Add = slices.Delete(slices.Clone(caps), i, i+1)
		args, err := PodmanRun(spec, containerName, name, image, r.node)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = podman("rm", "--force", "--time", "0", name) })
		if _, err := podman(append([]string{"run", "--detach"}, args...)...); err != nil {
			t.Fatal(err)
		}
		if code := exitCode(t, name); code == 0 {
			t.Errorf("without %s: the container exited 0", c)
		}
		logs, _ := podman("logs", name)
		t.Logf("without %s: %s", c, lastLine(logs))
		if _, err := os.Stat(filepath.Join(r.pins, "dropfilter/links/xdp_drop")); err == nil {
			t.Fatalf("without %s: xdp_drop's link is pinned", c)
		}
	}
	r.ready(t, r.start(t, image))
}

// lastLine is the last line of s in which bpfsup says why it failed
// ("bpfsup: ..."), else its last line.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "bpfsup: ") {
			return lines[i]
		}
	}
	return lines[len(lines)-1]
}
