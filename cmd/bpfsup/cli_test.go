package main

import (
	"os/exec"
	"strings"
	"testing"
)

// --user and --group resolve names and numbers; a name no database knows is
// an error that names it.
func TestLookupCredential(t *testing.T) {
	c, err := lookupCredential("root", "0")
	if err != nil {
		t.Fatal(err)
	}
	if c.UID != 0 || c.GID != 0 {
		t.Errorf("root/0: uid %d gid %d, want 0 0", c.UID, c.GID)
	}
	c, err = lookupCredential("65534", "")
	if err != nil {
		t.Fatal(err)
	}
	if c.UID != 65534 {
		t.Errorf("65534: uid %d", c.UID)
	}
	_, err = lookupCredential("no-such-user-bpfsup", "")
	if err == nil || !strings.Contains(err.Error(), `--user "no-such-user-bpfsup"`) {
		t.Errorf("unknown user: err %v, want one naming --user", err)
	}
	_, err = lookupCredential("", "no-such-group-bpfsup")
	if err == nil || !strings.Contains(err.Error(), `--group "no-such-group-bpfsup"`) {
		t.Errorf("unknown group: err %v, want one naming --group", err)
	}
}

// getent is the way to users of NSS modules; its parsing is checked on the
// entries every system has.
func TestGetent(t *testing.T) {
	if _, err := exec.LookPath("getent"); err != nil {
		t.Skip("no getent(1) on this system")
	}
	f, err := getent("passwd", "root")
	if err != nil {
		t.Fatal(err)
	}
	if f[0] != "root" || f[2] != "0" || f[3] != "0" {
		t.Errorf("getent passwd root: %q", f)
	}
	if f, err = getent("group", "root"); err != nil || f[2] != "0" {
		t.Errorf("getent group root: %q, %v", f, err)
	}
	if _, err := getent("passwd", "no-such-user-bpfsup"); err == nil {
		t.Error("getent of an unknown user: no error")
	}
}

func TestCutPlace(t *testing.T) {
	for _, tc := range []struct {
		in, hook, order, before, after, err string
	}{
		{in: "tcx/ingress:eth0", hook: "tcx/ingress:eth0"},
		{in: "tcx/ingress:eth0,first", hook: "tcx/ingress:eth0", order: "first"},
		{in: "tcx/egress:eth0,last", hook: "tcx/egress:eth0", order: "last"},
		{in: "tcx/ingress:eth0,before=fw/tc_log", hook: "tcx/ingress:eth0", before: "fw/tc_log"},
		{in: "netkit/peer:nk0,after=/sys/fs/bpf/x/links/y", hook: "netkit/peer:nk0", after: "/sys/fs/bpf/x/links/y"},
		{in: "tcx/ingress:eth0,before=", err: `place "before="`},
		{in: "tcx/ingress:eth0,firstly", err: `place "firstly"`},
	} {
		hook, place, err := cutPlace(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("cutPlace(%q): err = %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || hook != tc.hook || place.Order != tc.order || place.Before != tc.before || place.After != tc.after {
			t.Errorf("cutPlace(%q) = %q, %+v, %v", tc.in, hook, place, err)
		}
	}
}
