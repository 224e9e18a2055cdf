package testutil

import (
	"strings"
	"testing"
)

// TestFeatures probes every feature of the table on the running kernel. A
// feature the kernel should have (new enough, configured) but lacks fails;
// one it lacks for its version or configuration, or refuses outside the
// test VMs, is reported with the reason.
func TestFeatures(t *testing.T) {
	RequireRoot(t)
	t.Logf("kernel %s", KernelRelease())
	for _, f := range AllFeatures {
		t.Run(strings.ReplaceAll(f.Name, " ", "_"), func(t *testing.T) {
			if why := Missing(t, f); why != "" {
				t.Log(why)
				return
			}
			t.Logf("%s: present (Linux %s+)", f.Name, f.MinVersion)
		})
	}
}

func TestParseVersion(t *testing.T) {
	for in, want := range map[string][3]int{
		"6.1.0-56-cloud-amd64":          {6, 1, 0},
		"6.12.117+deb12-cloud-amd64":    {6, 12, 117},
		"6.18.44-fc-v782":               {6, 18, 44},
		"5.4":                           {5, 4, 0},
		"garbage":                       {0, 0, 0},
		"4.19.0-27-amd64 #1 SMP Debian": {4, 19, 0},
	} {
		if got := parseVersion(in); got != want {
			t.Errorf("parseVersion(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestKernelAtLeast(t *testing.T) {
	v := KernelVersion()
	if v[0] == 0 {
		t.Fatalf("no version in release %q", KernelRelease())
	}
	if !KernelAtLeast("3.0") {
		t.Errorf("kernel %s is not at least 3.0", KernelRelease())
	}
	if KernelAtLeast("99.0") {
		t.Errorf("kernel %s is at least 99.0", KernelRelease())
	}
	if !KernelAtLeast(KernelRelease()) {
		t.Errorf("kernel %s is not at least itself", KernelRelease())
	}
}
