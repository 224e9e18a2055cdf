//go:build systemdvm

package systemdvm

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf/link"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// testFDStoreRepin: with fd_store = true, kill -9 of bpfsup and every pin
// removed before systemd restarts it: the restarted bpfsup adopts the
// objects from the fds systemd hands back, pins them again, and the data
// path is filtered throughout.
func testFDStoreRepin(t *testing.T) {
	in := newInstance(t, "bpfsup-fdstore@", "s", "fd_store = true", "-ready-after", "-1s")
	// Time to remove the pins between the kill and the restart.
	dropIn(t, in.unit, "[Service]\nRestartSec=5s\n")
	must(t, "systemctl", "start", in.unit)
	before := in.ids(t)
	in.traffic(t)
	passed := in.rig.filtered(t, 0)

	fdsFile := filepath.Join(in.state, "fds")
	if err := os.Remove(fdsFile); err != nil {
		t.Fatal(err)
	}
	pid := mainPID(t, in.unit)
	must(t, "kill", "-9", strconv.Itoa(pid))
	testutil.WaitFor(t, waitLong, "systemd to see bpfsup die", func() bool {
		return mainPID(t, in.unit) != pid
	})
	dir := filepath.Join(pinRoot, in.object)
	if err := os.RemoveAll(dir); err != nil {
		t.Fatalf("remove the pins: %v", err)
	}
	if st := show(t, in.unit, "SubState"); st != "auto-restart" {
		t.Fatalf("pins removed in state %s, want auto-restart (before systemd starts bpfsup again)", st)
	}
	in.waitActive(t, pid)
	if after := in.ids(t); after != before {
		t.Errorf("after kill -9 with the pins removed: %+v, want the same link, program and maps %+v", after, before)
	}
	// The fds systemd handed back are bpfsup's: the application gets its
	// maps alone, its LISTEN_FDS and LISTEN_FDNAMES rewritten.
	testutil.WaitFor(t, waitLong, "the restarted application", func() bool {
		_, err := os.Stat(fdsFile)
		return err == nil
	})
	if fds := strings.TrimSpace(readFile(t, fdsFile)); fds != "2 fw_s/maps/drop_count:fw_s/maps/drop_ports" {
		t.Errorf("the restarted application was handed %q, want its 2 maps only", fds)
	}
	for _, p := range []string{"links", "maps/drop_ports", "maps/drop_count"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			t.Errorf("not pinned again: %v", err)
		}
	}
	in.rig.filtered(t, passed)
}

// testNoPins: pins = false (with the fd store): cases 3 to 5 with nothing
// of the object on the host's bpffs. A stop keeps the store, and so the
// link, from systemd 254 on (FileDescriptorStorePreserve=yes); on 252 the
// store ends with the stop and the link with it.
func testNoPins(t *testing.T, version int) {
	in := newInstance(t, "bpfsup-fdstore@", "n", "fd_store = true\npins = false", "-ready-after", "-1s")
	dir := filepath.Join(pinRoot, in.object)
	noPins := func(when string) {
		t.Helper()
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s: %s exists on the host's bpffs (%v), want no pins at all", when, dir, err)
		}
	}
	must(t, "systemctl", "start", in.unit)
	noPins("start")
	before := in.ids(t)
	in.traffic(t)
	passed := in.rig.filtered(t, 0)

	copyFile(t, objV2, in.obj)
	must(t, "systemctl", "reload", in.unit)
	var after ids
	testutil.WaitFor(t, waitLong, "the reloaded program behind the link", func() bool {
		after = in.ids(t)
		return after.prog != before.prog && show(t, in.unit, "ActiveState") == "active"
	})
	if after.link != before.link || after.dropPorts != before.dropPorts {
		t.Errorf("reload with pins = false: %+v, want the link and maps of %+v", after, before)
	}
	noPins("reload")
	passed = in.rig.filtered(t, passed)
	before = after

	pid := mainPID(t, in.unit)
	must(t, "kill", "-9", strconv.Itoa(pid))
	in.waitActive(t, pid)
	if after := in.ids(t); after != before {
		t.Errorf("kill -9 with pins = false: %+v, want %+v", after, before)
	}
	noPins("kill -9")
	passed = in.rig.filtered(t, passed)

	must(t, "systemctl", "stop", in.unit)
	noPins("stop")
	if version >= 254 {
		if e2e.LinkGone(link.ID(before.link)) {
			t.Errorf("systemd %d: link %d gone after stop, want it kept by FileDescriptorStorePreserve=yes", version, before.link)
		}
		in.rig.filtered(t, passed)
	} else {
		testutil.WaitFor(t, waitLong, "the link to go with the fd store", func() bool {
			return e2e.LinkGone(link.ID(before.link))
		})
		info("systemd %d: pins = false, the link went with the fd store at stop, as expected before 254", version)
	}
	must(t, "systemctl", "start", in.unit)
	after = in.ids(t)
	if version >= 254 && after.link != before.link {
		t.Errorf("start after stop: link %d, want %d from the preserved fd store", after.link, before.link)
	}
	if version < 254 && after.link == before.link {
		t.Errorf("start after stop on systemd %d: link %d again, want a new one", version, after.link)
	}
	noPins("start after stop")
}

// testFDStoreOutside: outside systemd (no NOTIFY_SOCKET), fd_store is an
// error that says why.
func testFDStoreOutside(t *testing.T) {
	in := newInstance(t, "bpfsup@", "o", "fd_store = true", "-ready-after", "-1s")
	out, code := run("env", "-u", "NOTIFY_SOCKET", bpfsupBin, "run", "-c", in.config)
	if code == 0 || !strings.Contains(out, "NOTIFY_SOCKET is not set") {
		t.Errorf("bpfsup run with fd_store outside systemd: exit %d, want an error about NOTIFY_SOCKET:\n%s", code, out)
	}
	if _, err := os.Stat(filepath.Join(pinRoot, in.object)); !os.IsNotExist(err) {
		t.Errorf("refused run left %s behind (%v)", in.object, err)
	}
}
