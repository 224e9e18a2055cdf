package check

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// node is a kubelet and a containerd of the test's own, standalone (no API
// server), both started in the rig's network namespace, which hostNetwork
// pods then share as they would share a node's. The pods are static pods
// made from the DaemonSet's pod template (staticPod).
type node struct {
	dir      string
	kubelet  *testutil.Proc
	ctrd     *testutil.Proc
	port     int
	manifest string // the static pods' directory
}

// kubeletPorts are the kubelet's port and read-only port, on 127.0.0.1 of
// the test's network namespace.
const kubeletPort, kubeletReadOnlyPort = 10250, 10255

// kubeletBin is the kubelet to run, $BPFSUP_KUBELET; the test skips
// without it, or without containerd.
func kubeletBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("BPFSUP_KUBELET")
	if bin == "" {
		t.Skip("no kubelet: `make k8s` builds one and runs this test with BPFSUP_KUBELET set")
	}
	for _, tool := range []string{"containerd", "ctr", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no container runtime for the kubelet: %s is not installed (scripts/setup.sh installs containerd)", tool)
		}
	}
	return bin
}

func startNode(t *testing.T, r *rig, bin string) *node {
	t.Helper()
	dir, err := os.MkdirTemp("", "bpfsup-k8s-")
	if err != nil {
		t.Fatal(err)
	}
	n := &node{dir: dir, manifest: filepath.Join(dir, "manifests"), port: kubeletReadOnlyPort}
	t.Cleanup(func() { n.teardown(t) })
	for _, d := range []string{"manifests", "logs", "containerd/cni/bin", "containerd/cni/conf", "kubelet"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	restoreSysctls(t)
	sharedBPFFS(t, testutil.MustBPFFS(t))
	kdir := filepath.Join(testutil.RepoRoot(), "examples", "kubernetes", "kubelet")
	n.template(t, filepath.Join(kdir, "containerd.toml"), "containerd/config.toml", filepath.Join(dir, "containerd"))
	n.template(t, filepath.Join(kdir, "kubelet.yaml"), "kubelet/config.yaml", dir)
	n.ctrd = testutil.StartProc(t, exec.Command("nsenter", "--net="+r.b.Path, "containerd",
		"--config", filepath.Join(dir, "containerd/config.toml")))
	testutil.WaitFor(t, startTimeout, "containerd's socket", func() bool {
		return n.ctr("version") == nil
	})
	n.importImage(t, buildPause(t))
	for _, image := range r.images {
		n.importImage(t, image)
	}
	n.kubelet = testutil.StartProc(t, exec.Command("nsenter", "--net="+r.b.Path, bin,
		"--config", filepath.Join(dir, "kubelet/config.yaml"), "--root-dir", filepath.Join(dir, "kubelet"),
		"--hostname-override", "bpfsup-test-node", "--v", "1"))
	testutil.WaitFor(t, startTimeout, "the kubelet's read-only port", func() bool {
		_, err := n.pods(r)
		return err == nil
	})
	return n
}

// template writes the file src with @DIR@ and the ports filled in to
// n.dir/dst.
func (n *node) template(t *testing.T, src, dst, dir string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.NewReplacer("@DIR@", dir, "@PORT@", strconv.Itoa(kubeletPort),
		"@READONLYPORT@", strconv.Itoa(kubeletReadOnlyPort)).Replace(string(data))
	if err := os.WriteFile(filepath.Join(n.dir, dst), []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
}

// ctr runs ctr against the node's containerd, in the kubelet's namespace.
func (n *node) ctr(args ...string) error {
	args = append([]string{"--address", filepath.Join(n.dir, "containerd/containerd.sock"), "--namespace", "k8s.io"}, args...)
	if out, err := exec.Command("ctr", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ctr %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// importImage copies image from podman's store into the node's containerd.
func (n *node) importImage(t *testing.T, image string) {
	t.Helper()
	tar := filepath.Join(n.dir, "image.tar")
	defer os.Remove(tar)
	if _, err := podman("save", "--format", "docker-archive", "--output", tar, image); err != nil {
		t.Fatal(err)
	}
	if err := n.ctr("images", "import", tar); err != nil {
		t.Fatal(err)
	}
}

// buildPause builds the sandbox image (./pause) with podman.
func buildPause(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "pause"), "./pause")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build pause: %v\n%s", err, out)
	}
	file := "FROM scratch\nCOPY pause /pause\nENTRYPOINT [\"/pause\"]\n"
	if err := os.WriteFile(filepath.Join(dir, "Containerfile"), []byte(file), 0o644); err != nil {
		t.Fatal(err)
	}
	const tag = "localhost/bpfsup-pause:1"
	if _, err := podman("build", "--pull=never", "--tag", tag, dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = podman("rmi", "--force", tag) })
	return tag
}

// kubeletSysctls are the kernel settings the kubelet sets at its start.
var kubeletSysctls = []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"}

// restoreSysctls puts the kernel settings the kubelet changes back as they
// are now, when the test ends.
func restoreSysctls(t *testing.T) {
	t.Helper()
	saved := map[string][]byte{}
	for _, s := range kubeletSysctls {
		if v, err := os.ReadFile("/proc/sys/" + s); err == nil {
			saved[s] = v
		}
	}
	t.Cleanup(func() {
		for s, v := range saved {
			if err := os.WriteFile("/proc/sys/"+s, v, 0o644); err != nil {
				t.Errorf("restore %s: %v", s, err)
			}
		}
	})
}

// teardown removes every static pod and waits for the kubelet to stop
// them, then stops the kubelet and containerd with whatever containerd left
// running, and removes the node's directory.
func (n *node) teardown(t *testing.T) {
	entries, _ := os.ReadDir(n.manifest)
	for _, e := range entries {
		os.Remove(filepath.Join(n.manifest, e.Name()))
	}
	if n.kubelet != nil {
		testutil.Poll(time.Minute, func() bool { return len(n.shims()) == 0 })
		n.kubelet.Kill(syscall.SIGTERM)
		<-n.kubelet.Done()
	}
	// What the kubelet did not stop: the containers' processes, children of
	// their shims, first, then the shims.
	for _, shim := range n.shims() {
		for _, pid := range children(shim) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			testutil.WaitProcGone(t, pid, startTimeout)
		}
		_ = syscall.Kill(shim, syscall.SIGKILL)
	}
	if n.ctrd != nil {
		n.ctrd.Kill(syscall.SIGTERM)
		<-n.ctrd.Done()
	}
	unmountUnder(t, n.dir)
	if err := os.RemoveAll(n.dir); err != nil {
		t.Errorf("remove %s: %v", n.dir, err)
	}
}

// shims lists the pids of the containerd shims of the node's containerd:
// those whose command line names its socket.
func (n *node) shims() []int {
	sock := filepath.Join(n.dir, "containerd/containerd.sock")
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		args := strings.Split(string(cmdline), "\x00")
		if len(args) > 0 && strings.HasPrefix(filepath.Base(args[0]), "containerd-shim") && strings.Contains(string(cmdline), sock) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// children lists the pids whose parent is pid.
func children(pid int) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, err := parentPID(child); err == nil && ppid == pid {
			pids = append(pids, child)
		}
	}
	return pids
}

// parentPID reads the parent of pid from /proc/PID/status.
func parentPID(pid int) (int, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "PPid:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, fmt.Errorf("pid %d: no PPid", pid)
}

// sharedBPFFS makes the bpffs at path a shared mount, as systemd makes every
// mount and as the runtime wants of a volume mounted with propagation, and
// makes it private again when the test ends, if it was.
func sharedBPFFS(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		before, _, ok := strings.Cut(line, " - ")
		f := strings.Fields(before)
		if !ok || len(f) < 6 || f[4] != path {
			continue
		}
		if strings.Contains(before, " shared:") || strings.Contains(before, " master:") {
			return
		}
	}
	if err := syscall.Mount("", path, "", syscall.MS_SHARED, ""); err != nil {
		t.Fatalf("make %s a shared mount: %v", path, err)
	}
	t.Cleanup(func() {
		if err := syscall.Mount("", path, "", syscall.MS_PRIVATE, ""); err != nil {
			t.Errorf("make %s private again: %v", path, err)
		}
	})
}

// unmountUnder unmounts what is mounted under dir (containerd's rootfs and
// shm mounts), deepest first.
func unmountUnder(t *testing.T, dir string) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Error(err)
		return
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			points = append(points, f[4])
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		if err := syscall.Unmount(points[i], syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", points[i], err)
		}
	}
}

// staticPod is the DaemonSet's pod template as a static pod running image:
// the same spec, with the node's directories in place of its hostPath
// volumes and a hostPath of the ConfigMap's files in place of the ConfigMap
// (a kubelet without an API server has no ConfigMaps).
func staticPod(t *testing.T, name string, tmpl *corev1.PodTemplateSpec, ns, image string, r *rig) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{ObjectMeta: *tmpl.ObjectMeta.DeepCopy(), Spec: *tmpl.Spec.DeepCopy()}
	pod.APIVersion, pod.Kind = "v1", "Pod"
	pod.Name, pod.Namespace = name, ns
	for i := range pod.Spec.Containers {
		pod.Spec.Containers[i].Image = image
	}
	dir := corev1.HostPathDirectory
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		switch {
		case v.HostPath != nil:
			v.HostPath = &corev1.HostPathVolumeSource{Path: r.node.HostPaths[v.HostPath.Path], Type: v.HostPath.Type}
		case v.ConfigMap != nil:
			v.VolumeSource = corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: r.node.ConfigMaps[v.ConfigMap.Name], Type: &dir}}
		default:
			t.Fatalf("volume %s: only hostPath and configMap volumes are modelled", v.Name)
		}
	}
	return pod
}

// put writes pod as the static pod file name.json, whole (a rename), and
// returns when it is in place.
func (n *node) put(t *testing.T, name string, pod *corev1.Pod) {
	t.Helper()
	data, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(n.dir, name+".json")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(n.manifest, name+".json")); err != nil {
		t.Fatal(err)
	}
}

// remove deletes the static pod file name.json.
func (n *node) remove(t *testing.T, name string) {
	t.Helper()
	if err := os.Remove(filepath.Join(n.manifest, name+".json")); err != nil {
		t.Fatal(err)
	}
}

// pods is the kubelet's list of its pods (its read-only port's /pods),
// read from within the rig's network namespace, where the kubelet listens.
func (n *node) pods(r *rig) ([]corev1.Pod, error) {
	var conn net.Conn
	err := r.b.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(n.port), 2*time.Second)
		return err
	})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(conn, "GET /pods HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /pods: %s", resp.Status)
	}
	var list corev1.PodList
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		return nil, err
	}
	return list.Items, nil
}

// container is the status of container c of the pod named name (a static
// pod's name carries the node's name as a suffix), or nil.
func (n *node) container(r *rig, name, c string) *corev1.ContainerStatus {
	pods, err := n.pods(r)
	if err != nil {
		return nil
	}
	for _, p := range pods {
		if p.Name != name+"-bpfsup-test-node" || p.DeletionTimestamp != nil {
			continue
		}
		for i := range p.Status.ContainerStatuses {
			if s := &p.Status.ContainerStatuses[i]; s.Name == c {
				return s
			}
		}
	}
	return nil
}

// logs is everything the containers of pod name logged, from the kubelet's
// pod logs directory.
func (n *node) logs(name string) string {
	files, _ := filepath.Glob(filepath.Join(n.dir, "logs", "*_"+name+"-bpfsup-test-node_*", "*", "*.log"))
	var b strings.Builder
	for _, f := range files {
		data, _ := os.ReadFile(f)
		b.Write(data)
	}
	return b.String()
}
