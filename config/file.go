package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pelletier/go-toml/v2"
)

// File is bpfsup's TOML configuration file. It says everything the flags
// say; a flag given on the command line wins over the file.
//
//	pin_root = "/sys/fs/bpf/bpfsup"
//	command = ["/usr/bin/fwctl", "--listen", ":9000"]
//	restart = "always"
//
//	[[object]]
//	path = "/usr/lib/fw/fw.bpf.o"
//	[[object.attach]]
//	program = "xdp_fw"
//	hook = "xdp:eth1"
//	[object.maps.counters]
//	access = "ro"
type File struct {
	PinRoot  string `toml:"pin_root"`
	StateDir string `toml:"state_dir"`
	Netns    string `toml:"netns"`
	// Command is the application, used when none follows "--".
	Command []string `toml:"command"`

	Restart            RestartMode `toml:"restart"`
	RestartDelay       *Duration   `toml:"restart_delay"`
	RestartMaxDelay    *Duration   `toml:"restart_max_delay"`
	StableAfter        *Duration   `toml:"stable_after"`
	StartLimit         *int        `toml:"start_limit"`
	StartLimitInterval *Duration   `toml:"start_limit_interval"`
	StopTimeout        *Duration   `toml:"stop_timeout"`

	User  string `toml:"user"`
	Group string `toml:"group"`
	// Notify is "" (bpfsup is ready once the child started) or "child".
	Notify Notify `toml:"notify"`
	// NotifyAccess is whose messages the child's notify socket takes:
	// "main" (the child alone, by default) or "all" (it and its
	// descendants), as systemd's NotifyAccess=.
	NotifyAccess NotifyAccess `toml:"notify_access"`
	LogFormat    string       `toml:"log_format"`
	MetricsAddr  string       `toml:"metrics_addr"`
	// OnUpgrade is what happens to the child after a reload; the zero value
	// when the file does not say.
	OnUpgrade OnUpgrade `toml:"on_upgrade"`
	Watch     bool      `toml:"watch"`
	Force     bool      `toml:"force"`
	// EnforceOrder moves bpfsup's links on ordered hooks (tcx, netkit)
	// back to their configured place when something else took it
	// (make-before-break), instead of only saying so.
	EnforceOrder bool `toml:"enforce_order"`
	// FDStore keeps every map, program and link in systemd's file
	// descriptor store too, so that a restart of bpfsup adopts them even
	// where their pins were removed.
	FDStore bool `toml:"fd_store"`
	// Pins = false (with fd_store) pins nothing on the system's bpffs: the
	// objects live in the fd store alone, and their pins in a bpffs of
	// bpfsup's own that nothing else sees. nil is true.
	Pins *bool `toml:"pins"`
	// ProgramStats has the kernel count every program's runs and run time
	// while bpfsup runs (BPF_ENABLE_STATS, held by bpfsup; the sysctl
	// kernel.bpf_stats_enabled is left alone).
	ProgramStats bool `toml:"program_stats"`
	// TrustedKeys are files of SSH public keys (.pub files, or
	// allowed_signers): an object's signature must be by one of them.
	TrustedKeys []string `toml:"trusted_keys"`
	// RequireSignature refuses an object that has no signature.
	RequireSignature bool `toml:"require_signature"`

	Objects []Object `toml:"object"`
}

// ParseConfig parses a configuration file. Unknown keys are errors that name
// them: a misspelt key silently ignored is a firewall silently open.
func ParseConfig(data []byte) (*File, error) {
	// go-toml reports a bad duration without its key: check them first.
	var raw map[string]any
	if toml.Unmarshal(data, &raw) == nil {
		for _, k := range durationKeys() {
			v, ok := raw[k]
			if !ok {
				continue
			}
			str, ok := v.(string)
			if !ok {
				return nil, fmt.Errorf("config: %s = %v: %s", k, v, durationHint)
			}
			if err := checkDuration(k, str); err != nil {
				return nil, fmt.Errorf("config: %w", err)
			}
		}
		// A key given an empty string is a mistake, never a way to ask
		// for the default: leave the key out for that.
		if key := emptyString(raw, ""); key != "" {
			return nil, fmt.Errorf("config: %s = \"\": an empty string; leave the key out for its default", key)
		}
	}
	var f File
	d := toml.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(&f); err != nil {
		var strict *toml.StrictMissingError
		if errors.As(err, &strict) {
			keys := make([]string, len(strict.Errors))
			for i, e := range strict.Errors {
				keys[i] = strings.Join(e.Key(), ".")
			}
			sort.Strings(keys)
			return nil, fmt.Errorf("config: unknown keys: %s", strings.Join(keys, ", "))
		}
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			if key, hint := configHint(de.Key(), err); hint != "" {
				return nil, fmt.Errorf("config: line %d, column %d: %s: %s", row, col, key, hint)
			}
			return nil, fmt.Errorf("config: line %d, column %d: %w", row, col, err)
		}
		return nil, fmt.Errorf("config: %w", err)
	}
	if err := f.check(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return &f, nil
}

// check checks what decoding does not: the modes that are strings (go-toml
// sets a string type without asking its UnmarshalText), and what each
// object must have.
func (f *File) check() error {
	if f.Restart != "" {
		if _, err := ParseRestartMode(string(f.Restart)); err != nil {
			return err
		}
	}
	if _, err := ParseNotify(string(f.Notify)); err != nil {
		return err
	}
	if _, err := ParseNotifyAccess(string(f.NotifyAccess)); err != nil {
		return err
	}
	if f.MetricsAddr != "" {
		if err := CheckMetricsAddr(f.MetricsAddr); err != nil {
			return err
		}
	}
	if err := CheckPins(f.FDStore, f.Pins == nil || *f.Pins, f.Objects); err != nil {
		return err
	}
	for i, o := range f.Objects {
		if o.Path == "" {
			return fmt.Errorf("object %d has no path", i+1)
		}
		if o.SHA256 != "" {
			sum, err := CheckSHA256(o.SHA256)
			if err != nil {
				return fmt.Errorf("object %s: %w", o.Path, err)
			}
			f.Objects[i].SHA256 = sum
		}
		for j, a := range o.Attach {
			if a.Program == "" || a.Hook == "" {
				return fmt.Errorf("object %s: attach %d needs program and hook", o.Path, j+1)
			}
			if _, _, err := a.Place(); err != nil {
				return fmt.Errorf("object %s: %w", o.Path, err)
			}
		}
		for name, m := range o.Maps {
			if _, err := ParseAccess(string(m.Access)); err != nil {
				return fmt.Errorf("object %s: map %s: %w", o.Path, name, err)
			}
			if m.Migrate != "" && m.Migrate != MigrateCopy {
				return fmt.Errorf("object %s: map %s: migrate %q: only \"copy\" is known", o.Path, name, m.Migrate)
			}
		}
	}
	return nil
}

// CheckPins checks that pins = false comes with fd_store = true (nothing
// else would keep the objects once bpfsup exits) and with no map at a pin
// path of its own (a path on the system's bpffs, which bpfsup then does not
// see).
func CheckPins(fdStore, pins bool, objs []Object) error {
	if pins {
		return nil
	}
	if !fdStore {
		return errors.New("pins = false needs fd_store = true: with neither pins nor systemd's fd store, nothing keeps the objects attached once bpfsup exits")
	}
	for _, o := range objs {
		for name, m := range o.Maps {
			if m.PinPath != "" {
				return fmt.Errorf("object %s: map %s: pin_path %q with pins = false: bpfsup pins nothing on the system's bpffs then, and sees no pin there; leave pins on to share a map by its pin path",
					o.Path, name, m.PinPath)
			}
		}
	}
	return nil
}

// CheckMetricsAddr checks that addr is HOST:PORT with a port from 0 to
// 65535 (0: any free port).
func CheckMetricsAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("metrics address %q: want HOST:PORT: %w", addr, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("metrics address %q: port %q is not a number from 0 to 65535", addr, port)
	}
	return nil
}

// ChangedSettings lists the keys whose values differ between f and g,
// except the objects: what a reload, which applies the objects only, does
// not apply.
func (f *File) ChangedSettings(g *File) []string {
	if f == nil || g == nil {
		return nil
	}
	var keys []string
	fv, gv := reflect.ValueOf(*f), reflect.ValueOf(*g)
	t := fv.Type()
	for i := range t.NumField() {
		key := strings.Split(t.Field(i).Tag.Get("toml"), ",")[0]
		if key == "object" {
			continue
		}
		if !reflect.DeepEqual(fv.Field(i).Interface(), gv.Field(i).Interface()) {
			keys = append(keys, key)
		}
	}
	return keys
}

// durationKeys are the keys of File's Duration fields. This and the
// regexps below are made when first used: package initialisation runs at
// every start of bpfsup, and of every command.
var durationKeys = sync.OnceValue(func() []string {
	var keys []string
	t := reflect.TypeFor[File]()
	for i := range t.NumField() {
		if f := t.Field(i); f.Type == reflect.TypeFor[*Duration]() {
			keys = append(keys, strings.Split(f.Tag.Get("toml"), ",")[0])
		}
	}
	return keys
})

const durationHint = `a duration is a string with its unit, like "10s" or "500ms"`

// maxDurationText is the longest duration Go (and bpfsup) can hold.
var maxDurationText = sync.OnceValue(time.Duration(1<<63 - 1).String)

// checkDuration checks the duration str of key: a duration with its unit,
// in range, not negative, and more than zero for stop_timeout.
func checkDuration(key, str string) error {
	d, err := time.ParseDuration(str)
	if err != nil {
		if durationShape().MatchString(str) {
			return fmt.Errorf("%s = %q: out of range; at most %s", key, str, maxDurationText())
		}
		return fmt.Errorf("%s = %q: %s", key, str, durationHint)
	}
	if d < 0 {
		return fmt.Errorf("%s = %q: must not be negative", key, str)
	}
	if d == 0 && key == "stop_timeout" {
		return fmt.Errorf("%s = %q: must be more than 0 (the application needs a moment to stop)", key, str)
	}
	return nil
}

// durationShape is what a duration looks like, whatever its size.
var durationShape = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^[-+]?([0-9]*(\.[0-9]*)?(ns|us|µs|μs|ms|s|m|h))+$`)
})

// emptyString finds a key of raw (a decoded TOML table, under prefix) whose
// value is an empty string, or an array holding one, and returns its name;
// "" when there is none. notify = "" is the documented default.
func emptyString(raw map[string]any, prefix string) string {
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		key := prefix + k
		switch v := raw[k].(type) {
		case string:
			if v == "" && key != "notify" {
				return key
			}
		case map[string]any:
			if e := emptyString(v, key+"."); e != "" {
				return e
			}
		case []any:
			for i, el := range v {
				switch el := el.(type) {
				case string:
					if el == "" {
						return fmt.Sprintf("%s[%d]", key, i)
					}
				case map[string]any:
					if e := emptyString(el, fmt.Sprintf("%s[%d].", key, i)); e != "" {
						return e
					}
				}
			}
		}
	}
	return ""
}

// tomlTypeError is how go-toml says a value has the wrong type, in Go's terms.
var tomlTypeError = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`cannot decode TOML (\w+) into .* of type (\S+)$`)
})

// configHint says what is wrong with the value of key in TOML's terms,
// where go-toml says it in Go's.
func configHint(key []string, err error) (string, string) {
	k := strings.Join(key, ".")
	if k == "object.attach" {
		return k, `each attachment is a table: [[object.attach]] with program = "PROG" and hook = "HOOK" (PROG@HOOK is the form of -a on the command line)`
	}
	m := tomlTypeError().FindStringSubmatch(err.Error())
	if m == nil {
		return k, ""
	}
	want := m[2]
	switch strings.TrimPrefix(want, "*") {
	case "config.RestartMode", "config.Notify", "config.NotifyAccess", "config.Access", "config.Migrate", "config.OnUpgrade":
		want = "string"
	}
	switch {
	case strings.HasPrefix(want, "[]"):
		want = "an array"
	case strings.HasPrefix(want, "map["), strings.Contains(want, "."):
		want = "a table"
	case strings.HasPrefix(want, "int"), strings.HasPrefix(want, "uint"), strings.HasPrefix(want, "*int"):
		want = "an integer"
	case want == "bool":
		want = "true or false"
	case want == "string":
		want = "a string"
	default:
		return k, ""
	}
	return k, fmt.Sprintf("must be %s, not a TOML %s", want, m[1])
}
