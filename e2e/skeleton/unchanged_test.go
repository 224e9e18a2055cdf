package skeleton

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// unchangedMsg is bpfsup's log line for an object it adopted as the manifest
// recorded it, without planning from the object file.
const unchangedMsg = "nothing changed since the last install"

// A restart that finds the object, its configuration and every pin as the
// last install left them adopts without reading the object's programs, and
// hands the child the same fds in the same order as a start that planned
// from the object. Any change to the object or the configuration plans from
// the object again.
func TestRestartUnchanged(t *testing.T) {
	env := testutil.MustEnv(t)
	a, b := testutil.MustNetns(t, "unch-a"), testutil.MustNetns(t, "unch-b")
	_, if1 := testutil.MustVethPair(t, a, b)
	_, if2 := testutil.MustVethPair(t, a, b)
	dir := t.TempDir()
	obj := filepath.Join(dir, "fw.bpf.o")
	e2e.PutObject(t, obj, "dropfilter")
	names := filepath.Join(dir, "names")
	// Two links named against their order, so that the hand-off order
	// (the configuration's) shows.
	config := func(extra string) string {
		return e2e.WriteConfig(t, fmt.Sprintf(`
netns = %q
[[object]]
path = %q
handoff_links = true
[[object.attach]]
program = "xdp_drop"
hook = "xdp:%s"
name = "zz_first"
[[object.attach]]
program = "xdp_drop"
hook = "xdp:%s"
name = "aa_second"
%s`, b.Path, obj, if1.Name, if2.Name, extra))
	}
	cfg := config("")
	run := func(cfg string) (out, fdnames string) {
		t.Helper()
		out, code := env.Run(t, "run", "-c", cfg, "--restart", "never", "--",
			"sh", "-c", `printf %s "$LISTEN_FDNAMES" > `+names)
		if code != 0 {
			t.Fatalf("bpfsup run: exit %d\n%s", code, out)
		}
		data, err := os.ReadFile(names)
		if err != nil {
			t.Fatal(err)
		}
		return out, string(data)
	}

	out, first := run(cfg)
	if strings.Contains(out, unchangedMsg) {
		t.Fatalf("the first start adopted as unchanged:\n%s", out)
	}
	_, progs := e2e.InstallCounts(t, out, "fw")
	wantNames := "fw/maps/drop_count:fw/maps/drop_ports:fw/links/zz_first:fw/links/aa_second"
	if first != wantNames {
		t.Errorf("first start: LISTEN_FDNAMES=%q, want %q", first, wantNames)
	}
	links := map[string]uint32{}
	for _, name := range []string{"zz_first", "aa_second"} {
		links[name] = e2e.FindLink(t, objectStatus(t, env, "fw"), name).ID
	}

	out, second := run(cfg)
	if !strings.Contains(out, unchangedMsg) {
		t.Errorf("a restart with nothing changed planned from the object:\n%s", out)
	}
	if adopted, loaded := e2e.InstallCounts(t, out, "fw"); adopted != progs || loaded != 0 {
		t.Errorf("unchanged restart: adopted %d, loaded %d; want %d, 0", adopted, loaded, progs)
	}
	if second != first {
		t.Errorf("unchanged restart: LISTEN_FDNAMES=%q, the first start's was %q", second, first)
	}
	for name, id := range links {
		if got := e2e.FindLink(t, objectStatus(t, env, "fw"), name).ID; got != id {
			t.Errorf("link %s is %d after the unchanged restart, was %d", name, got, id)
		}
	}

	// Another configuration (the child may only read a map now): planned.
	ro := config("[object.maps.drop_count]\naccess = \"ro\"\n")
	out, _ = run(ro)
	if strings.Contains(out, unchangedMsg) {
		t.Errorf("a restart with another configuration adopted as unchanged:\n%s", out)
	}
	if adopted, loaded := e2e.InstallCounts(t, out, "fw"); adopted != progs || loaded != 0 {
		t.Errorf("restart with another configuration: adopted %d, loaded %d; want %d, 0", adopted, loaded, progs)
	}
	out, _ = run(ro)
	if !strings.Contains(out, unchangedMsg) {
		t.Errorf("the restart after it, with nothing changed, planned from the object:\n%s", out)
	}

	// Another object at the same path: planned, and its program loaded.
	e2e.PutObject(t, obj, "dropfilter_v2")
	out, _ = run(ro)
	if strings.Contains(out, unchangedMsg) {
		t.Errorf("a restart with another object adopted as unchanged:\n%s", out)
	}
	if _, loaded := e2e.InstallCounts(t, out, "fw"); loaded == 0 {
		t.Errorf("restart with another object: loaded no program\n%s", out)
	}
}

// A manifest whose program names are paths (edited by hand, or by another
// tool) is not adopted as unchanged, even where the path leads to the pin
// it records and the link names the same path: the start plans from the
// object, and the manifest it writes names the program again.
func TestRestartUnchangedManifestNames(t *testing.T) {
	env := testutil.MustEnv(t)
	a, b := testutil.MustNetns(t, "unchn-a"), testutil.MustNetns(t, "unchn-b")
	_, ifc := testutil.MustVethPair(t, a, b)
	obj := filepath.Join(t.TempDir(), "fw.bpf.o")
	e2e.PutObject(t, obj, "dropfilter")
	cfg := e2e.WriteConfig(t, fmt.Sprintf(`
netns = %q
[[object]]
path = %q
[[object.attach]]
program = "xdp_drop"
hook = "xdp:%s"
`, b.Path, obj, ifc.Name))
	run := func() string {
		t.Helper()
		out, code := env.Run(t, "run", "-c", cfg, "--restart", "never", "--", "true")
		if code != 0 {
			t.Fatalf("bpfsup run: exit %d\n%s", code, out)
		}
		return out
	}
	run()
	if out := run(); !strings.Contains(out, unchangedMsg) {
		t.Fatalf("a restart with nothing changed planned from the object:\n%s", out)
	}

	path := filepath.Join(env.StateDir, "fw.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	const evil = "../programs/xdp_drop"
	progs := m["programs"].(map[string]any)
	progs[evil] = progs["xdp_drop"]
	delete(progs, "xdp_drop")
	for _, l := range m["links"].(map[string]any) {
		l.(map[string]any)["program"] = evil
	}
	if data, err = json.MarshalIndent(m, "", "  "); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}

	if out := run(); strings.Contains(out, unchangedMsg) {
		t.Fatalf("a manifest naming a program %q was adopted as unchanged:\n%s", evil, out)
	}
	if data, err = os.ReadFile(path); err != nil || strings.Contains(string(data), evil) {
		t.Fatalf("the manifest still names %q after the start (%v):\n%s", evil, err, data)
	}
	if out := run(); !strings.Contains(out, unchangedMsg) {
		t.Errorf("the restart after it planned from the object:\n%s", out)
	}
}
