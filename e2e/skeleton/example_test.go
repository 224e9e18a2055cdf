package skeleton

import (
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// examples/xdp-counter, the child of `make demo`, works under bpfsup: it gets
// the counters map and prints the counts as they rise.
func TestExampleXDPCounter(t *testing.T) {
	env := testutil.MustEnv(t)
	bin := filepath.Join(t.TempDir(), "xdp-counter")
	// testutil.GoBuild: prebuilt in the VMs of `make kernels`.
	if out, err := testutil.GoBuild("./examples/xdp-counter", bin); err != nil {
		t.Fatalf("build examples/xdp-counter: %v\n%s", err, out)
	}

	a, b := testutil.MustNetns(t, "ex-a"), testutil.MustNetns(t, "ex-b")
	_, ifB := testutil.MustVethPair(t, a, b)
	recv := testutil.StartUDPReceiver(t, b, 0)
	testutil.StartUDPSender(t, a, netip.AddrPortFrom(ifB.Addr, uint16(recv.Port())), 200)
	sup := startRun(t, env, nil, "--netns", b.Path, "-o", testutil.BPFObject("counter"),
		"-a", "count_packets@xdp:"+ifB.Name, "--", bin)

	sup.WaitOutput(t, "counters map id", startTimeout)
	m := regexp.MustCompile(`counters map id (\d+)`).FindStringSubmatch(sup.Output())
	if m == nil {
		t.Fatalf("no map id in the example's output:\n%s", sup.Output())
	}
	if id := e2e.FindMap(t, objectStatus(t, env, "counter"), "counters").ID; m[1] != strconv.FormatUint(uint64(id), 10) {
		t.Fatalf("example says counters map id %s, status says %d", m[1], id)
	}
	// The example prints once a second; two lines with UDP counts that grew
	// show it reads the live map.
	udp := regexp.MustCompile(`(?m)^counts: .*\budp=(\d+)`)
	var counts []uint64
	rose := testutil.Poll(waitTimeout, func() bool {
		counts = counts[:0]
		for _, c := range udp.FindAllStringSubmatch(sup.Output(), -1) {
			n, _ := strconv.ParseUint(c[1], 10, 64)
			counts = append(counts, n)
		}
		return len(counts) >= 2 && counts[len(counts)-1] > counts[0]
	})
	if !rose {
		t.Fatalf("the example's UDP counts did not rise within %v:\n%s", waitTimeout, sup.Output())
	}
	t.Logf("the example printed UDP counts %v", counts)
}

// The tools `make demo` checks for are all installed by scripts/setup.sh,
// which `make demo` and `make test` run first: the README's first command
// works on a fresh machine as written. Each tool's Debian package (as dpkg
// knows it here) must be in setup.sh's list: that the tool is on this
// machine proves nothing for a fresh one (ping was here, and setup.sh did
// not install it).
func TestDemoToolsInstalled(t *testing.T) {
	tools := forList(t, "examples/xdp-counter/demo.sh", "tool")
	installs := forList(t, "scripts/setup.sh", "pkg")
	if _, err := exec.LookPath("dpkg-query"); err != nil {
		t.Skip("no dpkg-query: not a Debian system, whose packages setup.sh installs (the kernels' VMs)")
	}
	for _, tool := range tools {
		if strings.HasPrefix(strings.Trim(tool, `"`), "$") {
			continue // Go, from the environment
		}
		testutil.RequireTool(t, tool)
		pkg := debianPackageOf(t, tool)
		if !slices.Contains(installs, pkg) {
			t.Errorf("demo.sh needs %s, from Debian's %s, which scripts/setup.sh does not install (it installs %v)", tool, pkg, installs)
		}
	}
}

// forList is the words of the `for VAR in WORDS; do` line of the script at
// path (from the repository's root).
func forList(t *testing.T, path, variable string) []string {
	t.Helper()
	script, err := os.ReadFile(filepath.Join(testutil.RepoRoot(), path))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^for ` + variable + ` in ([^;]+); do`).FindSubmatch(script)
	if m == nil {
		t.Fatalf("%s has no `for %s in ...; do` line", path, variable)
	}
	return strings.Fields(string(m[1]))
}

// debianPackageOf is the Debian package that installed the tool in PATH.
// dpkg records paths as the package ships them: /bin/ping where the merged
// /usr resolves it as /usr/bin/ping.
func debianPackageOf(t *testing.T, tool string) string {
	t.Helper()
	path, err := exec.LookPath(tool)
	if err != nil {
		t.Fatal(err)
	}
	real, _ := filepath.EvalSymlinks(path)
	for _, p := range []string{path, strings.TrimPrefix(path, "/usr"), real, strings.TrimPrefix(real, "/usr")} {
		out, err := exec.Command("dpkg-query", "-S", p).Output()
		if err != nil {
			continue
		}
		// "iputils-ping: /bin/ping", or "pkg:amd64: path".
		pkg, _, _ := strings.Cut(strings.TrimSpace(string(out)), ": ")
		pkg, _, _ = strings.Cut(pkg, ",")
		pkg, _, _ = strings.Cut(pkg, ":")
		return pkg
	}
	t.Fatalf("%s (%s): no Debian package of this machine ships it", tool, path)
	return ""
}
