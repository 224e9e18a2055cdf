package skeleton

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
	copyFile(t, testutil.BPFObject("dropfilter"), obj)
	names := filepath.Join(dir, "names")
	// Two links named against their order, so that the hand-off order
	// (the configuration's) shows.
	config := func(extra string) string {
		return writeConfig(t, fmt.Sprintf(`
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
	_, progs := installCounts(t, out, "fw")
	wantNames := "fw/maps/drop_count:fw/maps/drop_ports:fw/links/zz_first:fw/links/aa_second"
	if first != wantNames {
		t.Errorf("first start: LISTEN_FDNAMES=%q, want %q", first, wantNames)
	}
	links := map[string]uint32{}
	for _, name := range []string{"zz_first", "aa_second"} {
		links[name] = findLink(t, objectStatus(t, env, "fw"), name).ID
	}

	out, second := run(cfg)
	if !strings.Contains(out, unchangedMsg) {
		t.Errorf("a restart with nothing changed planned from the object:\n%s", out)
	}
	if adopted, loaded := installCounts(t, out, "fw"); adopted != progs || loaded != 0 {
		t.Errorf("unchanged restart: adopted %d, loaded %d; want %d, 0", adopted, loaded, progs)
	}
	if second != first {
		t.Errorf("unchanged restart: LISTEN_FDNAMES=%q, the first start's was %q", second, first)
	}
	for name, id := range links {
		if got := findLink(t, objectStatus(t, env, "fw"), name).ID; got != id {
			t.Errorf("link %s is %d after the unchanged restart, was %d", name, got, id)
		}
	}

	// Another configuration (the child may only read a map now): planned.
	ro := config("[object.maps.drop_count]\naccess = \"ro\"\n")
	out, _ = run(ro)
	if strings.Contains(out, unchangedMsg) {
		t.Errorf("a restart with another configuration adopted as unchanged:\n%s", out)
	}
	if adopted, loaded := installCounts(t, out, "fw"); adopted != progs || loaded != 0 {
		t.Errorf("restart with another configuration: adopted %d, loaded %d; want %d, 0", adopted, loaded, progs)
	}
	out, _ = run(ro)
	if !strings.Contains(out, unchangedMsg) {
		t.Errorf("the restart after it, with nothing changed, planned from the object:\n%s", out)
	}

	// Another object at the same path: planned, and its program loaded.
	copyFile(t, testutil.BPFObject("dropfilter_v2"), obj)
	out, _ = run(ro)
	if strings.Contains(out, unchangedMsg) {
		t.Errorf("a restart with another object adopted as unchanged:\n%s", out)
	}
	if _, loaded := installCounts(t, out, "fw"); loaded == 0 {
		t.Errorf("restart with another object: loaded no program\n%s", out)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to+".tmp", data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(to+".tmp", to); err != nil {
		t.Fatal(err)
	}
}
