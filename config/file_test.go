package config

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// TestParseConfigErrors: a value of the wrong type is refused with its key
// and what to write instead; a bare number is never read as nanoseconds.
func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"stop_timeout = 10\n", `stop_timeout = 10: a duration is a string with its unit`},
		{"restart_delay = \"fast\"\n", `restart_delay = "fast": a duration`},
		{"[[object]]\npath = \"x.o\"\nattach = [\"p@xdp:eth0\"]\n", `line 3, column 11: object.attach: each attachment is a table`},
		{"restart = 3\n", `restart: must be a string, not a TOML integer`},
		{"start_limit = \"5\"\n", `start_limit: must be an integer, not a TOML string`},
		{"[[object]]\npath = \"x.o\"\n[object.programs.p]\nautoattach = \"no\"\n", `object.programs.p.autoattach: must be true or false`},
		{"command = \"./app\"\n", `command: must be an array`},
		{"restrat = \"always\"\n", `unknown keys: restrat`},
		{"stop_timeout = \"-1s\"\n", `stop_timeout = "-1s": must not be negative`},
		{"stop_timeout = \"0s\"\n", `stop_timeout = "0s": must be more than 0`},
		{"restart_max_delay = \"9999999999h\"\n", `restart_max_delay = "9999999999h": out of range; at most 2562047h47m16.854775807s`},
		{"restart_delay = \"-5ms\"\n", `restart_delay = "-5ms": must not be negative`},
		{"[[object]]\npath = \"x.o\"\nname = \"\"\n", `object[0].name = "": an empty string`},
		{"pin_root = \"\"\n", `pin_root = "": an empty string`},
		{"command = [\"./app\", \"\"]\n", `command[1] = "": an empty string`},
		{"notify_access = \"some\"\n", `notify_access "some": must be "main"`},
		{"pins = false\n", `pins = false needs fd_store = true`},
		{"pins = \"no\"\n", `pins: must be true or false`},
		{"fd_store = true\npins = false\n[[object]]\npath = \"x.o\"\n[object.maps.m]\npin_path = \"/sys/fs/bpf/m\"\n", `map m: pin_path "/sys/fs/bpf/m" with pins = false`},
	} {
		_, err := ParseConfig([]byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one with %q", tc.doc, err, tc.want)
		}
	}

	if f, err := ParseConfig([]byte("fd_store = true\npins = false\n")); err != nil || !f.FDStore || f.Pins == nil || *f.Pins {
		t.Errorf("fd_store = true, pins = false: %+v, %v", f, err)
	}

	if want := []string{"restart_delay", "restart_max_delay", "stable_after", "start_limit_interval", "stop_timeout"}; !slices.Equal(durationKeys(), want) {
		t.Errorf("duration keys %v, want %v", durationKeys(), want)
	}
	f, err := ParseConfig([]byte("stop_timeout = \"1m30s\"\nrestart_delay = \"250ms\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if f.StopTimeout.Duration != 90*time.Second || f.RestartDelay.Duration != 250*time.Millisecond {
		t.Fatalf("stop_timeout %v, restart_delay %v", f.StopTimeout.Duration, f.RestartDelay.Duration)
	}
}

// TestChangedSettings: what a reload would not apply is named by its key.
func TestChangedSettings(t *testing.T) {
	a, err := ParseConfig([]byte("command = [\"./app\"]\nrestart = \"always\"\nstop_timeout = \"5s\"\n[[object]]\npath = \"a.o\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := ParseConfig([]byte("command = [\"./app\", \"-v\"]\nrestart = \"always\"\nstop_timeout = \"6s\"\n[[object]]\npath = \"b.o\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := a.ChangedSettings(b), []string{"command", "stop_timeout"}; !slices.Equal(got, want) {
		t.Errorf("changed %v, want %v", got, want)
	}
	if got := a.ChangedSettings(a); len(got) != 0 {
		t.Errorf("unchanged file: changed %v", got)
	}
}
