package check

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/config"
	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

const (
	// manifestInterface is the interface the ConfigMap's hooks name; the
	// test puts its veth there, the one substitution it makes.
	manifestInterface = "eth1"
	// dropRate is datagrams per second to each of the two ports.
	dropRate = 1000
	// startTimeout bounds a container's start to ready, and a wait for
	// traffic.
	startTimeout = 30 * time.Second
)

// rig is the DaemonSet's pod on a node of the test's making: two network
// namespaces joined by a veth pair (the pod's "node" network is the second),
// a private pin root and state directory in place of the node's /sys/fs/bpf
// and /run/bpfsup, and UDP streams to a dropped and to an open port in the
// second namespace throughout.
type rig struct {
	ex    *Example
	node  Node
	probe []string
	// pins is where the container's /sys/fs/bpf/bpfsup is on the host.
	pins             string
	b                *testutil.Netns
	dropped, allowed *testutil.UDPReceiver
	toDropped        *testutil.UDPSender
	toAllowed        *testutil.UDPSender
	// startTraffic starts both streams, once the dropped port is in the map.
	startTraffic func()
	// images are those the test uses, for a kubelet's node to import.
	images []string
	// seq numbers the containers, for unique names.
	seq  int
	base string
}

func newRig(t *testing.T) *rig {
	t.Helper()
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("podman"); err != nil {
		t.Skip("no container runtime: podman is not installed (scripts/setup.sh installs it)")
	}
	r := &rig{ex: loadExample(t), base: fmt.Sprintf("bpfsup-test-%d", os.Getpid())}
	probe, err := ReadinessCommand(&r.ex.DaemonSet.Spec.Template.Spec, containerName)
	if err != nil {
		t.Fatal(err)
	}
	r.probe = probe
	a := testutil.MustNetns(t, "pod-a")
	r.b = testutil.MustNetns(t, "pod-b")
	_, ifB := testutil.MustVethPair(t, a, r.b)
	bpffs := testutil.MustPinRoot(t)
	r.pins = filepath.Join(bpffs, "bpfsup")
	state := testutil.MustStateDir(t)
	t.Cleanup(func() {
		// After the containers are gone (registered later, run earlier).
		bin := testutil.BuildBpfsup(t)
		if out, err := exec.Command(bin, "down", "--pin-root", r.pins, "--state-dir", state).CombinedOutput(); err != nil {
			t.Logf("bpfsup down: %v\n%s", err, out)
		}
	})
	r.node = Node{
		Netns:      r.b.Path,
		HostPaths:  map[string]string{"/sys/fs/bpf": bpffs, "/run/bpfsup": state},
		ConfigMaps: map[string]string{r.ex.ConfigMap.Name: r.writeConfig(t, ifB.Name)},
	}
	r.dropped = testutil.StartUDPReceiver(t, r.b, 0)
	r.allowed = testutil.StartUDPReceiver(t, r.b, 0)
	r.startTraffic = func() {
		r.toDropped = testutil.StartUDPSender(t, a, netip.AddrPortFrom(ifB.Addr, uint16(r.dropped.Port())), dropRate)
		r.toAllowed = testutil.StartUDPSender(t, a, netip.AddrPortFrom(ifB.Addr, uint16(r.allowed.Port())), dropRate)
	}
	return r
}

// writeConfig writes the ConfigMap's files into a directory, with the test's
// interface in place of the manifest's, and returns the directory.
func (r *rig) writeConfig(t *testing.T, iface string) string {
	t.Helper()
	dir := t.TempDir()
	for key, text := range r.ex.ConfigMap.Data {
		if key == configKey {
			hooks := strings.Count(text, `hook = "`)
			text = strings.ReplaceAll(text, ":"+manifestInterface+`"`, ":"+iface+`"`)
			if strings.Count(text, ":"+iface+`"`) != hooks {
				t.Fatalf("ConfigMap %s: not every hook is on %s", r.ex.ConfigMap.Name, manifestInterface)
			}
			if _, err := config.ParseConfig([]byte(text)); err != nil {
				t.Fatalf("ConfigMap %s with interface %s: %v", r.ex.ConfigMap.Name, iface, err)
			}
		}
		if err := os.WriteFile(filepath.Join(dir, key), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// podman runs podman with args and returns its combined output.
func podman(args ...string) (string, error) {
	out, err := exec.Command("podman", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("podman %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// start starts the DaemonSet's container from image, as its pod template
// says, and returns its name. Cleanup removes it.
func (r *rig) start(t *testing.T, image string) string {
	t.Helper()
	r.seq++
	name := fmt.Sprintf("%s-%d", r.base, r.seq)
	args, err := PodmanRun(&r.ex.DaemonSet.Spec.Template.Spec, containerName, name, image, r.node)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = podman("rm", "--force", "--time", "0", name) })
	if _, err := podman(append([]string{"run", "--detach"}, args...)...); err != nil {
		t.Fatal(err)
	}
	return name
}

// ready waits until the readiness probe of container name succeeds, as the
// kubelet's would, and fails the test when the container exits first.
func (r *rig) ready(t *testing.T, name string) {
	t.Helper()
	var last string
	ok := testutil.Poll(startTimeout, func() bool {
		out, err := podman(append([]string{"exec", name}, r.probe...)...)
		if err == nil {
			return true
		}
		last = out
		return !r.running(name)
	})
	if !ok || !r.running(name) {
		logs, _ := podman("logs", name)
		t.Fatalf("container %s not ready (probe: %s)\n%s", name, last, logs)
	}
}

// running says whether container name runs.
func (r *rig) running(name string) bool {
	out, err := podman("inspect", "--format", "{{.State.Running}}", name)
	return err == nil && strings.TrimSpace(out) == "true"
}

// exitCode waits for container name to exit and returns its exit status.
func exitCode(t *testing.T, name string) int {
	t.Helper()
	out, err := podman("wait", name)
	if err != nil {
		t.Fatal(err)
	}
	var code int
	if _, err := fmt.Sscan(out, &code); err != nil {
		t.Fatalf("podman wait %s: %q", name, out)
	}
	return code
}

// buildVariant builds an image from base with bpf/<object>.bpf.o in place of
// the image's dropfilter.bpf.o, as a new release of the objects would be,
// and returns its name. Cleanup removes it.
func buildVariant(t *testing.T, base, object string) string {
	t.Helper()
	dir := t.TempDir()
	data, err := os.ReadFile(testutil.BPFObject(object))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "dropfilter.bpf.o"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	file := fmt.Sprintf("FROM %s\nCOPY dropfilter.bpf.o /usr/lib/bpfsup/dropfilter.bpf.o\n", base)
	if err := os.WriteFile(filepath.Join(dir, "Containerfile"), []byte(file), 0o644); err != nil {
		t.Fatal(err)
	}
	tag := fmt.Sprintf("localhost/bpfsup-test:%s-%d", strings.ReplaceAll(object, "_", "-"), os.Getpid())
	if _, err := podman("build", "--pull=never", "--tag", tag, dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = podman("rmi", "--force", tag) })
	return tag
}

// baseImage is the image `make image` built: $BPFSUP_IMAGE, by default
// localhost/bpfsup:latest.
func baseImage(t *testing.T) string {
	t.Helper()
	image := os.Getenv("BPFSUP_IMAGE")
	if image == "" {
		image = "localhost/bpfsup:latest"
	}
	if _, err := podman("image", "exists", image); err != nil {
		t.Fatalf("image %s is missing: run `make image` first (%v)", image, err)
	}
	return image
}

// pinned is what the test reads of the pins between steps.
type pinned struct {
	link, prog, tcLink   uint32
	dropPorts, dropCount uint32
	droppedSoFar         uint64
}

// read reads the kernel's view of the pins.
func (r *rig) read(t *testing.T) pinned {
	t.Helper()
	l := e2e.PinnedLinkInfo(t, filepath.Join(r.pins, "dropfilter/links/xdp_drop"))
	tc, err := e2e.PinnedAttachmentInfo(filepath.Join(r.pins, "counter/links/count_tc"))
	if err != nil {
		t.Fatalf("count_tc's link: %v", err)
	}
	p := pinned{
		link: uint32(l.ID), prog: uint32(l.Program), tcLink: uint32(tc.ID),
		dropPorts: uint32(e2e.PinnedMapID(t, filepath.Join(r.pins, "dropfilter/maps/drop_ports"))),
		dropCount: uint32(e2e.PinnedMapID(t, filepath.Join(r.pins, "dropfilter/maps/drop_count"))),
	}
	var one uint8
	e2e.LookupPinned(t, filepath.Join(r.pins, "dropfilter/maps/drop_ports"), uint16(r.dropped.Port()), &one)
	e2e.LookupPinned(t, filepath.Join(r.pins, "dropfilter/maps/drop_count"), uint32(0), &p.droppedSoFar)
	return p
}

// filtering checks that traffic flows to the open port and that not one
// datagram reached the dropped one, what is queued included.
func (r *rig) filtering(t *testing.T, when string) {
	t.Helper()
	from := r.allowed.Count()
	testutil.WaitFor(t, startTimeout, "datagrams to the open port "+when, func() bool { return r.allowed.Count() >= from+50 })
	if n := r.dropped.Count(); n != 0 {
		t.Fatalf("%s: %d datagrams reached the dropped port %d", when, n, r.dropped.Port())
	}
}

// kept checks that the link, the maps and their contents are those of
// before, and says whether the program is.
func kept(t *testing.T, when string, before, now pinned) (sameProgram bool) {
	t.Helper()
	if now.link != before.link || now.tcLink != before.tcLink {
		t.Errorf("%s: links %d, %d, want %d, %d (the same)", when, now.link, now.tcLink, before.link, before.tcLink)
	}
	if now.dropPorts != before.dropPorts || now.dropCount != before.dropCount {
		t.Errorf("%s: maps %d, %d, want %d, %d (the same)", when, now.dropPorts, now.dropCount, before.dropPorts, before.dropCount)
	}
	if now.droppedSoFar < before.droppedSoFar {
		t.Errorf("%s: drop_count %d, below the %d of before", when, now.droppedSoFar, before.droppedSoFar)
	}
	return now.prog == before.prog
}

// bpffsMounts lists the bpf mounts in container name's mount namespace:
// mount point and root within its bpffs, from /proc/PID/mountinfo.
func bpffsMounts(t *testing.T, name string) []string {
	t.Helper()
	out, err := podman("inspect", "--format", "{{.State.Pid}}", name)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile("/proc/" + strings.TrimSpace(out) + "/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var mounts []string
	for _, line := range bytes.Split(data, []byte("\n")) {
		before, after, ok := strings.Cut(string(line), " - ")
		if ok && strings.HasPrefix(after, "bpf ") {
			f := strings.Fields(before)
			mounts = append(mounts, f[4]+" (root "+f[3]+")")
		}
	}
	return mounts
}

// installedRE matches bpfsup's log line for a start's install.
var installedRE = regexp.MustCompile(`msg="objects installed" objects=\d+ adopted=(\d+) loaded=(\d+)`)

// lastInstall is the adopted and loaded counts of the last install that
// container name logged.
func lastInstall(t *testing.T, name string) string {
	t.Helper()
	logs, err := podman("logs", name)
	if err != nil {
		t.Fatal(err)
	}
	all := installedRE.FindAllStringSubmatch(logs, -1)
	if len(all) == 0 {
		t.Fatalf("container %s logged no install:\n%s", name, logs)
	}
	m := all[len(all)-1]
	return "adopted=" + m[1] + " loaded=" + m[2]
}
