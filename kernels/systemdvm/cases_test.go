//go:build systemdvm

package systemdvm

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

var units = []string{"bpfsup@", "bpfsup-hardened@", "bpfsup-fdstore@"}

// TestSystemd runs every case in one boot, in order: each is a subtest,
// and the host's table has one row per subtest. Later cases build on the
// package installed by the first.
func TestSystemd(t *testing.T) {
	version := systemdVersion(t)
	info("systemd %d, kernel %s", version, strings.TrimSpace(must(t, "uname", "-r")))

	t.Run("0_dpkg_install", testInstall)
	if t.Failed() {
		t.FailNow()
	}
	t.Run("1_analyze_verify", func(t *testing.T) { testVerify(t, version) })

	// Cases 2 to 5 on the example unit, with notify = "child" and an
	// application that says READY=1 after 2 s.
	a := newInstance(t, "bpfsup@", "a", `notify = "child"`, "-ready-after", "2s")
	// A watchdog short enough for the SIGSTOP case, long enough for a
	// reload under emulation.
	dropIn(t, a.unit, "[Service]\nWatchdogSec=8s\n")
	flow(t, a, "", true)

	t.Run("6_start_limit", testStartLimit)
	t.Run("7_socket_activation", testSocket)

	// Case 8: the hardened unit through cases 2 to 5, with bpfsup's own
	// readiness (no notify = "child"): its STATUS= is what systemd shows.
	h := newInstance(t, "bpfsup-hardened@", "h", "", "-ready-after", "-1s")
	dropIn(t, h.unit, "[Service]\nWatchdogSec=8s\n")
	flow(t, h, "8_hardened_", false)
	t.Run("8_security_exposure", testExposure)

	t.Run("fd_store_pins_removed_kill9", testFDStoreRepin)
	t.Run("fd_store_pins_false", func(t *testing.T) { testNoPins(t, version) })
	t.Run("fd_store_outside_systemd", testFDStoreOutside)
}

func testInstall(t *testing.T) {
	out := must(t, "dpkg", "-i", "/vmtest/bpfsup.deb")
	t.Log(out)
	for _, u := range units {
		if _, err := os.Stat("/usr/lib/systemd/system/" + u + ".service"); err != nil {
			t.Errorf("unit %s not installed: %v", u, err)
		}
		// A template enables nothing by itself; no instance is enabled.
		// UNIT STATE PRESET: Debian's preset says "enabled"; the state is
		// what counts.
		out, _ := run("systemctl", "list-unit-files", "--no-legend", u+".service")
		if f := strings.Fields(out); len(f) < 2 || f[1] != "disabled" {
			t.Errorf("%s after install: %q, want disabled", u, out)
		}
	}
	if out, _ := run("systemctl", "list-units", "--all", "--no-legend", "bpfsup*"); strings.TrimSpace(out) != "" {
		t.Errorf("units of bpfsup loaded after install: %s", out)
	}
	if _, err := os.Stat("/usr/share/doc/bpfsup/examples/fw.toml"); err != nil {
		t.Errorf("example configuration: %v", err)
	}
	info("installed: %s", strings.TrimSpace(must(t, bpfsupBin, "version")))
}

// testVerify: `systemd-analyze verify` says nothing about the units, except
// that 252 does not know FileDescriptorStorePreserve= (254 and later).
func testVerify(t *testing.T, version int) {
	for _, u := range units {
		out, code := run("systemd-analyze", "verify", u+"x.service")
		out = strings.TrimSpace(out)
		want := ""
		if u == "bpfsup-fdstore@" && version < 254 {
			want = "Unknown key 'FileDescriptorStorePreserve' in section [Service], ignoring."
		}
		switch {
		case code != 0:
			t.Errorf("systemd-analyze verify %sx.service: exit %d\n%s", u, code, out)
		case want == "" && out != "":
			t.Errorf("systemd-analyze verify %sx.service is not clean:\n%s", u, out)
		case want != "" && (!strings.Contains(out, want) || strings.Count(out, "\n") > 0):
			t.Errorf("systemd-analyze verify %sx.service: want only %q, got:\n%s", u, want, out)
		case want != "":
			info("verify %s: %s (expected before systemd 254)", u, out)
		}
	}
}

// flow is cases 2 to 5 on instance in; prefix names the rows.
func flow(t *testing.T, in *instance, prefix string, childNotify bool) {
	var before ids
	var passed uint64
	ok := t.Run(prefix+"2_start_waits_for_ready", func(t *testing.T) {
		began := time.Now()
		must(t, "systemctl", "start", in.unit)
		took := time.Since(began)
		info("%sstart of %s took %s", prefix, in.unit, took.Round(10*time.Millisecond))
		// Once start returns, everything is attached and the application
		// runs (ready, with notify = "child").
		o := in.status(t)
		if o.Supervisor == nil || o.Supervisor.ChildPID == 0 || !o.Supervisor.Ready {
			t.Errorf("after start: supervisor %+v, want its application running and ready", o.Supervisor)
		}
		before = in.ids(t)
		st := must(t, "systemctl", "status", "--no-pager", in.unit)
		if childNotify {
			stamp, err := os.ReadFile(filepath.Join(in.state, "ready"))
			if err != nil {
				t.Fatalf("the application never said READY=1: %v", err)
			}
			ns, _ := strconv.ParseInt(string(stamp), 10, 64)
			if readyAt := time.Unix(0, ns); readyAt.After(time.Now()) || took < 2*time.Second {
				t.Errorf("start returned after %s, before the application's READY=1 (sent after 2 s)", took)
			}
			if !strings.Contains(st, `Status: "child: app ready"`) {
				t.Errorf("systemctl status does not show the application's STATUS=:\n%s", st)
			}
		} else if !regexp.MustCompile(`Status: "objects=1 programs=\d+ links=1 child=\d+`).MatchString(st) {
			t.Errorf("systemctl status does not show bpfsup's STATUS=:\n%s", st)
		}
	})
	if !ok {
		return
	}
	// Traffic from here to the end of the flow (Cleanup of t stops it).
	in.traffic(t)
	passed = in.rig.filtered(t, 0)
	t.Run(prefix+"3_reload_in_place", func(t *testing.T) {
		copyFile(t, objV2, in.obj)
		must(t, "systemctl", "reload", in.unit)
		var after ids
		testutil.WaitFor(t, waitLong, "the reloaded program behind the link", func() bool {
			after = in.ids(t)
			return after.prog != before.prog && show(t, in.unit, "ActiveState") == "active"
		})
		if after.link != before.link || after.dropPorts != before.dropPorts || after.dropCount != before.dropCount {
			t.Errorf("reload: link and maps %+v, want those of before %+v with a new program", after, before)
		}
		before = after
		if m := e2e.FindMap(t, in.status(t), "drop_ports"); m.Entries != 1 {
			t.Errorf("drop_ports holds %d entries after the reload, want the 1 the application put", m.Entries)
		}
		passed = in.rig.filtered(t, passed)
	})
	t.Run(prefix+"4_kill9_adopts", func(t *testing.T) {
		pid := mainPID(t, in.unit)
		must(t, "kill", "-9", strconv.Itoa(pid))
		in.waitActive(t, pid)
		if after := in.ids(t); after != before {
			t.Errorf("after kill -9: %+v, want the same link, program and maps %+v", after, before)
		}
		passed = in.rig.filtered(t, passed)
	})
	t.Run(prefix+"4_watchdog_sigstop_adopts", func(t *testing.T) {
		if show(t, in.unit, "WatchdogUSec") == "0" || show(t, in.unit, "WatchdogUSec") == "infinity" {
			t.Skip("no watchdog on this unit")
		}
		pid := mainPID(t, in.unit)
		must(t, "kill", "-STOP", strconv.Itoa(pid))
		in.waitActive(t, pid)
		if r := show(t, in.unit, "NRestarts"); r == "0" {
			t.Errorf("NRestarts = 0 after the watchdog")
		}
		if after := in.ids(t); after != before {
			t.Errorf("after the watchdog: %+v, want the same link, program and maps %+v", after, before)
		}
		passed = in.rig.filtered(t, passed)
	})
	t.Run(prefix+"5_stop_keeps_then_start_adopts", func(t *testing.T) {
		_ = os.Remove(filepath.Join(in.state, "signals"))
		must(t, "systemctl", "stop", in.unit)
		if r := show(t, in.unit, "Result"); r != "success" {
			t.Errorf("Result=%s after stop, want success", r)
		}
		if s := in.signals(); len(s) != 1 {
			t.Errorf("the application got %d SIGTERMs, want 1", len(s))
		}
		if o := in.status(t); o.Supervisor != nil {
			t.Errorf("a supervisor still holds %s after stop: %+v", in.object, o.Supervisor)
		}
		if after := in.ids(t); after != before {
			t.Errorf("after stop: %+v, want the same link, program and maps %+v", after, before)
		}
		passed = in.rig.filtered(t, passed)
		must(t, "systemctl", "start", in.unit)
		if after := in.ids(t); after != before {
			t.Errorf("after start: %+v, want the same link, program and maps %+v", after, before)
		}
		passed = in.rig.filtered(t, passed)
	})
}

// testStartLimit: an application that always fails makes bpfsup give up
// (exit 1) after its start_limit; systemd restarts bpfsup until its own
// StartLimitBurst=, and the unit fails with start-limit-hit; the program
// stays attached throughout.
func testStartLimit(t *testing.T) {
	in := newInstance(t, "bpfsup@", "f", "start_limit = 2\nstart_limit_interval = \"60s\"", "-fail")
	must(t, "systemctl", "start", "--no-block", in.unit)
	testutil.WaitFor(t, 3*waitLong, in.unit+" failed", func() bool {
		return show(t, in.unit, "ActiveState") == "failed"
	})
	// The unit's Result is that of the first failure (exit-code) on some
	// versions, start-limit-hit on others; the limit shows in the restarts
	// and in the next start, which systemd refuses.
	result := show(t, in.unit, "Result")
	if result != "start-limit-hit" && result != "exit-code" {
		t.Errorf("Result=%s, want start-limit-hit or exit-code", result)
	}
	if s := show(t, in.unit, "ExecMainStatus"); s != "1" {
		t.Errorf("bpfsup's last exit status %s, want 1 (its start limit)", s)
	}
	if n, burst := show(t, in.unit, "NRestarts"), show(t, in.unit, "StartLimitBurst"); n != burst {
		t.Errorf("NRestarts=%s, want StartLimitBurst=%s", n, burst)
	}
	// systemd refuses the next start too; 252 words its refusal after the
	// unit's Result (exit-code), later versions say "too often".
	lastPID := show(t, in.unit, "ExecMainPID")
	if out, code := run("systemctl", "start", in.unit); code == 0 {
		t.Errorf("systemctl start after the limit: exit 0, want systemd's refusal:\n%s", out)
	}
	if pid := show(t, in.unit, "ExecMainPID"); pid != lastPID {
		t.Errorf("systemctl start after the limit ran bpfsup again (pid %s, was %s)", pid, lastPID)
	}
	if j, _ := run("journalctl", "--no-pager", "-o", "cat", "-u", in.unit); !strings.Contains(j, "Start request repeated too quickly") {
		t.Errorf("no \"Start request repeated too quickly\" in the journal of %s", in.unit)
	}
	info("start limit: Result=%s NRestarts=%s", result, show(t, in.unit, "NRestarts"))
	in.ids(t) // still attached
}

// appPy is the socket-activated application: python-systemd's view of
// what it was handed, one "fd name" line each.
const appPy = `import os, signal, sys
from systemd import daemon
with open(sys.argv[1] + ".tmp", "w") as f:
    for fd, name in sorted(daemon.listen_fds_with_names().items()):
        f.write("%d %s\n" % (fd, name))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
signal.pause()
`

// testSocket: a .socket unit activates bpfsup, which hands the application
// the socket first and the BPF fds after it, every one named.
func testSocket(t *testing.T) {
	writeFile(t, "/vmtest/app.py", appPy)
	writeFile(t, "/run/systemd/system/bpfsup@.socket", "[Socket]\nListenStream=127.0.0.1:9000\nFileDescriptorName=web\n")
	in := newInstance(t, "bpfsup@", "k", "")
	writeFile(t, in.config, strings.Replace(readFile(t, in.config),
		"command = [", `command = ["/usr/bin/python3", "/vmtest/app.py", "/run/vmapp/k.fds"] # `, 1))
	must(t, "systemctl", "daemon-reload")
	t.Cleanup(func() {
		_, _ = run("systemctl", "stop", "bpfsup@k.socket")
		os.Remove("/run/systemd/system/bpfsup@.socket")
		_, _ = run("systemctl", "daemon-reload")
	})
	must(t, "systemctl", "start", "bpfsup@k.socket")
	// A connection starts the service.
	must(t, "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9000")
	var got string
	testutil.WaitFor(t, waitLong, "the application's list of fds", func() bool {
		data, err := os.ReadFile("/run/vmapp/k.fds")
		got = string(data)
		return err == nil
	})
	want := "3 web\n4 fw_k/maps/drop_count\n5 fw_k/maps/drop_ports\n"
	if got != want {
		t.Errorf("python-systemd's listen_fds_with_names():\n%s\nwant:\n%s", got, want)
	}
}

// testExposure: systemd-analyze security of the example unit and of the
// hardened one, for the report.
func testExposure(t *testing.T) {
	re := regexp.MustCompile(`Overall exposure level for (\S+): ([\d.]+) (\S+)`)
	for _, u := range []string{"bpfsup@x.service", "bpfsup-hardened@x.service"} {
		out, _ := run("systemd-analyze", "security", "--no-pager", u)
		m := re.FindStringSubmatch(out)
		if m == nil {
			t.Errorf("systemd-analyze security %s: no exposure level in:\n%s", u, out)
			continue
		}
		info("exposure %s: %s %s", m[1], m[2], m[3])
	}
}

func readFile(t testing.TB, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
