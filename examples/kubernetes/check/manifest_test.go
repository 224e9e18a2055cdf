package check

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/bpfsup/bpfsup/config"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// exampleDir is examples/kubernetes, the manifests' directory.
var exampleDir = filepath.Join(testutil.RepoRoot(), "examples", "kubernetes")

// The DaemonSet's container and the key of its configuration in the ConfigMap.
const (
	containerName = "bpfsup"
	configKey     = "bpfsup.toml"
)

func loadExample(t *testing.T) *Example {
	t.Helper()
	ex, err := LoadExample(exampleDir)
	if err != nil {
		t.Fatal(err)
	}
	return ex
}

// The manifests decode strictly, and say what the README says they say.
func TestManifests(t *testing.T) {
	ex := loadExample(t)
	ds := ex.DaemonSet
	if u := ds.Spec.UpdateStrategy; u.RollingUpdate == nil || u.RollingUpdate.MaxSurge == nil || u.RollingUpdate.MaxSurge.IntValue() != 0 {
		t.Errorf("DaemonSet: updateStrategy %+v, want RollingUpdate with maxSurge 0 (a surged pod finds the objects locked)", u)
	}
	spec := &ds.Spec.Template.Spec
	if !spec.HostNetwork {
		t.Error("DaemonSet: no hostNetwork: the hooks are on the node's interfaces")
	}
	f := exampleConfig(t, ex)
	stop := 10 * time.Second
	if f.StopTimeout != nil {
		stop = f.StopTimeout.Duration
	}
	if g := spec.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= stop {
		t.Errorf("DaemonSet: terminationGracePeriodSeconds %v, want more than the configuration's stop_timeout %v", g, stop)
	}
	probe, err := ReadinessCommand(spec, containerName)
	if err != nil || strings.Join(probe, " ") != "/usr/local/bin/bpfsup status --ready" {
		t.Errorf("DaemonSet: readiness probe %q (%v), want bpfsup status --ready", probe, err)
	}
	c := spec.Containers[0]
	wantMount(t, spec, c, "/sys/fs/bpf", "/sys/fs/bpf", corev1.MountPropagationHostToContainer)
	wantMount(t, spec, c, "/run/bpfsup", "/run/bpfsup", corev1.MountPropagationNone)
	if caps := c.SecurityContext.Capabilities; caps == nil || len(caps.Drop) != 1 || caps.Drop[0] != "ALL" {
		t.Errorf("DaemonSet: capabilities %+v, want ALL dropped", caps)
	}
	down := &ex.Down.Spec.Template.Spec
	if strings.Join(down.Containers[0].Args, " ") != "down" {
		t.Errorf("Job: args %q, want down", down.Containers[0].Args)
	}
	wantMount(t, down, down.Containers[0], "/sys/fs/bpf", "/sys/fs/bpf", corev1.MountPropagationHostToContainer)
	wantMount(t, down, down.Containers[0], "/run/bpfsup", "/run/bpfsup", corev1.MountPropagationNone)
}

// wantMount checks that c mounts the host's path at mountPath with mode.
func wantMount(t *testing.T, spec *corev1.PodSpec, c corev1.Container, path, mountPath string, mode corev1.MountPropagationMode) {
	t.Helper()
	for _, m := range c.VolumeMounts {
		if m.MountPath != mountPath {
			continue
		}
		for _, v := range spec.Volumes {
			if v.Name == m.Name && v.HostPath != nil && v.HostPath.Path == path {
				got := corev1.MountPropagationNone
				if m.MountPropagation != nil {
					got = *m.MountPropagation
				}
				if got != mode {
					t.Errorf("container %s: %s mounted with propagation %s, want %s", c.Name, mountPath, got, mode)
				}
				return
			}
		}
	}
	t.Errorf("container %s: no hostPath %s mounted at %s", c.Name, path, mountPath)
}

// exampleConfig parses the ConfigMap's configuration with bpfsup's parser
// and checks that every object it names is in the image.
func exampleConfig(t *testing.T, ex *Example) *config.File {
	t.Helper()
	text, ok := ex.ConfigMap.Data[configKey]
	if !ok {
		t.Fatalf("ConfigMap %s: no %s", ex.ConfigMap.Name, configKey)
	}
	f, err := config.ParseConfig([]byte(text))
	if err != nil {
		t.Fatalf("ConfigMap %s: %s: %v", ex.ConfigMap.Name, configKey, err)
	}
	copied := imageObjects(t)
	for _, o := range f.Objects {
		if !copied[o.Path] {
			t.Errorf("ConfigMap: object %s is not in the image (the Containerfile copies %v)", o.Path, copied)
		}
	}
	return f
}

// copyRE matches the Containerfile's COPY of objects into /usr/lib/bpfsup/.
var copyRE = regexp.MustCompile(`(?m)^COPY ((?:bpf/\S+\.bpf\.o )+)/usr/lib/bpfsup/$`)

// imageObjects is the set of the objects' paths in the image, as the
// Containerfile copies them from bpf/.
func imageObjects(t *testing.T) map[string]bool {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testutil.RepoRoot(), "Containerfile"))
	if err != nil {
		t.Fatal(err)
	}
	objs := map[string]bool{}
	for _, m := range copyRE.FindAllStringSubmatch(string(data), -1) {
		for _, src := range strings.Fields(m[1]) {
			objs["/usr/lib/bpfsup/"+filepath.Base(src)] = true
		}
	}
	return objs
}

// A misspelt field is an error naming it, not a setting dropped: the decode
// is strict, as the API server's is.
func TestManifestsStrict(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(exampleDir, "bpfsup-xdp.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ from, to, want string }{
		{"mountPropagation: HostToContainer", "mountPropogation: HostToContainer", `unknown field "spec.template.spec.containers[0].volumeMounts[0].mountPropogation"`},
		{"      maxSurge: 0", "      maxSurge: 0\n      maxSurge: 1", `key "maxSurge" already set`},
		{"hostNetwork: true", "hostNetwork: yes please", "hostNetwork"},
	} {
		bad := strings.Replace(string(data), tc.from, tc.to, 1)
		if bad == string(data) {
			t.Fatalf("%q is not in bpfsup-xdp.yaml", tc.from)
		}
		_, err := DecodeBytes("bpfsup-xdp.yaml", []byte(bad))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q instead of %q: error %v, want one with %q", tc.to, tc.from, err, tc.want)
		}
	}
}
