package check

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"
	corev1 "k8s.io/api/core/v1"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// podName is the static pod's name (the kubelet adds the node's).
const podName = "bpfsup-xdp"

// The DaemonSet's pod template as a static pod of a real kubelet and
// containerd, with UDP traffic to a dropped and to an open port throughout:
// its container SIGKILLed (the kubelet restarts it), the image rolled from v1
// to v2 and back, a second pod at once, an image the verifier refuses, and
// the pod deleted for good, then the removal Job's pod. Not one datagram
// reaches the dropped port until the removal, and the link, its maps and
// their contents are kept throughout.
func TestKubeletPod(t *testing.T) {
	bin := kubeletBin(t)
	r := newRig(t)
	v1 := baseImage(t)
	v2 := buildVariant(t, v1, "dropfilter_v2")
	bad := buildVariant(t, v1, "dropfilter_bad")
	r.images = []string{v1, v2, bad}
	n := startNode(t, r, bin)
	tmpl := &r.ex.DaemonSet.Spec.Template
	ns := r.ex.DaemonSet.Namespace

	// Bidirectional propagation, which the issue asked for, is refused
	// without privileged: true, by the kubelet as by the API server.
	bidi := staticPod(t, podName+"-bidi", tmpl, ns, v1, r)
	mode := corev1.MountPropagationBidirectional
	for i, m := range bidi.Spec.Containers[0].VolumeMounts {
		if m.MountPath == "/sys/fs/bpf" {
			bidi.Spec.Containers[0].VolumeMounts[i].MountPropagation = &mode
		}
	}
	n.put(t, podName+"-bidi", bidi)
	const refused = "Bidirectional mount propagation is available only to privileged containers"
	testutil.WaitFor(t, startTimeout, "the kubelet to refuse Bidirectional propagation", func() bool {
		return strings.Contains(n.kubelet.Output(), refused)
	})
	n.remove(t, podName+"-bidi")

	n.put(t, podName, staticPod(t, podName, tmpl, ns, v1, r))
	first := n.ready(t, r, podName, v1, "")
	e2e.PutPinned(t, filepath.Join(r.pins, "dropfilter/maps/drop_ports"), uint16(r.dropped.Port()), uint8(1))
	r.startTraffic()
	r.filtering(t, "after the first start")
	before := r.read(t)

	// a. The container SIGKILLed: the kubelet starts it again.
	t0 := time.Now()
	if err := n.ctr("tasks", "kill", "--signal", "SIGKILL", strings.TrimPrefix(first.ContainerID, "containerd://")); err != nil {
		t.Fatal(err)
	}
	n.ready(t, r, podName, v1, first.ContainerID)
	t.Logf("kubelet: container SIGKILLed to restarted, adopted and ready: %v", time.Since(t0).Round(time.Millisecond))
	now := r.read(t)
	if !kept(t, "after SIGKILL", before, now) {
		t.Errorf("after SIGKILL: program %d, want %d (adopted)", now.prog, before.prog)
	}
	r.filtering(t, "after SIGKILL")

	// b. Rolled to v2 and back.
	for _, image := range []string{v2, v1} {
		t0 := time.Now()
		n.put(t, podName, staticPod(t, podName, tmpl, ns, image, r))
		n.ready(t, r, podName, image, "")
		t.Logf("kubelet: rolled to %s, the old pod's SIGTERM to the new one ready: %v", image, time.Since(t0).Round(time.Millisecond))
		now := r.read(t)
		if kept(t, "rolled to "+image, before, now) {
			t.Errorf("rolled to %s: xdp_drop is still program %d", image, now.prog)
		}
		r.filtering(t, "rolled to "+image)
		before = now
	}

	// c. A second pod at once: refused, naming the holder.
	n.put(t, podName+"-surge", staticPod(t, podName+"-surge", tmpl, ns, v1, r))
	n.failed(t, r, podName+"-surge", "held by")
	n.remove(t, podName+"-surge")
	n.ready(t, r, podName, v1, "")
	if !kept(t, "beside a second pod", before, r.read(t)) {
		t.Error("a second pod changed the program")
	}
	r.filtering(t, "beside a second pod")

	// d. An image the verifier refuses: the old programs stay.
	n.put(t, podName, staticPod(t, podName, tmpl, ns, bad, r))
	n.failed(t, r, podName, "verifier")
	if !kept(t, "after the refused image", before, r.read(t)) {
		t.Error("the refused image changed the program")
	}
	r.filtering(t, "after the refused image")
	n.put(t, podName, staticPod(t, podName, tmpl, ns, v1, r))
	n.ready(t, r, podName, v1, "")
	r.filtering(t, "rolled back")

	// e. Deleted for good: the programs stay, until the removal Job's pod.
	n.remove(t, podName)
	testutil.WaitFor(t, time.Minute, "the pod to go", func() bool { return len(n.shims()) == 0 })
	r.filtering(t, "with the pod deleted")
	if !kept(t, "with the pod deleted", before, r.read(t)) {
		t.Error("deleting the pod changed the program")
	}
	job := &r.ex.Down.Spec.Template
	n.put(t, "bpfsup-down", staticPod(t, "bpfsup-down", job, ns, v1, r))
	testutil.WaitFor(t, time.Minute, "the removal pod to finish", func() bool {
		s := n.container(r, "bpfsup-down", job.Spec.Containers[0].Name)
		return s != nil && s.State.Terminated != nil
	})
	if s := n.container(r, "bpfsup-down", job.Spec.Containers[0].Name); s.State.Terminated.ExitCode != 0 {
		t.Fatalf("the removal pod exited %d:\n%s", s.State.Terminated.ExitCode, n.logs("bpfsup-down"))
	}
	testutil.WaitFor(t, startTimeout, "xdp_drop's link to go", func() bool { return e2e.LinkGone(link.ID(before.link)) })
	r.dropped.WaitCount(t, 1, startTimeout)
}

// ready waits until the kubelet reports container bpfsup of pod name ready,
// running image, and not the container notID (the one killed), and returns
// its status.
func (n *node) ready(t *testing.T, r *rig, name, image, notID string) *corev1.ContainerStatus {
	t.Helper()
	var s *corev1.ContainerStatus
	ok := testutil.Poll(2*time.Minute, func() bool {
		s = n.container(r, name, containerName)
		return s != nil && s.Ready && s.ContainerID != notID && strings.HasSuffix(s.Image, strings.TrimPrefix(image, "localhost/"))
	})
	if !ok {
		t.Fatalf("pod %s not ready with %s: %+v\n%s", name, image, s, n.logs(name))
	}
	return s
}

// failed waits until the container of pod name has failed and logged want.
func (n *node) failed(t *testing.T, r *rig, name, want string) {
	t.Helper()
	ok := testutil.Poll(2*time.Minute, func() bool {
		s := n.container(r, name, containerName)
		failed := s != nil && (s.RestartCount > 0 || (s.State.Terminated != nil && s.State.Terminated.ExitCode != 0))
		return failed && strings.Contains(n.logs(name), want)
	})
	if !ok {
		t.Fatalf("pod %s: no failure saying %q:\n%s", name, want, n.logs(name))
	}
}
