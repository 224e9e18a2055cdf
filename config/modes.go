package config

import (
	"fmt"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// The modes of the configuration are typed, and parsed once, where they are
// read: from the TOML file (ParseConfig) or from a flag (the Parse
// functions). A value that is not one of a mode's words is an error that
// lists them.

// Access is how a map is handed to the application.
type Access string

// Access modes. The empty Access is AccessRW.
const (
	AccessRW   Access = "rw"
	AccessRO   Access = "ro"
	AccessWO   Access = "wo"
	AccessNone Access = "none"
)

// ParseAccess parses an access mode; "" is AccessRW.
func ParseAccess(s string) (Access, error) {
	switch a := Access(s); a {
	case "", AccessRW:
		return AccessRW, nil
	case AccessRO, AccessWO, AccessNone:
		return a, nil
	}
	return "", fmt.Errorf("access %q: must be rw, ro, wo or none", s)
}

// Migrate is how an incompatible pinned map is replaced: "" (not at all:
// an error) or MigrateCopy.
type Migrate string

// MigrateCopy copies the entries of the old map into the new one.
const MigrateCopy Migrate = "copy"

// RestartMode is when the application is started again, with systemd's
// words and meaning.
type RestartMode string

// Restart modes.
const (
	RestartAlways    RestartMode = "always"
	RestartOnFailure RestartMode = "on-failure"
	RestartNever     RestartMode = "never"
)

// ParseRestartMode parses a restart mode.
func ParseRestartMode(s string) (RestartMode, error) {
	switch m := RestartMode(s); m {
	case RestartAlways, RestartOnFailure, RestartNever:
		return m, nil
	}
	return "", fmt.Errorf("restart %q: must be always, on-failure or never", s)
}

// OnUpgrade is what happens to the application after a reload that
// changed something: it is restarted with the new fds, left running, or
// sent a signal.
type OnUpgrade struct {
	// Action is "restart", "none" or "signal".
	Action string
	// Signal is the signal of Action "signal".
	Signal syscall.Signal
}

// The actions of OnUpgrade.
const (
	UpgradeRestart = "restart"
	UpgradeNone    = "none"
	UpgradeSignal  = "signal"
)

// ParseOnUpgrade parses "restart", "none" or "signal:NAME" ("signal:HUP",
// "signal:SIGUSR1"); "" is "restart".
func ParseOnUpgrade(s string) (OnUpgrade, error) {
	switch s {
	case "", UpgradeRestart:
		return OnUpgrade{Action: UpgradeRestart}, nil
	case UpgradeNone:
		return OnUpgrade{Action: UpgradeNone}, nil
	}
	name, ok := strings.CutPrefix(s, UpgradeSignal+":")
	if !ok {
		return OnUpgrade{}, fmt.Errorf("on_upgrade %q: must be restart, none or signal:NAME", s)
	}
	sig := unix.SignalNum("SIG" + strings.TrimPrefix(strings.ToUpper(name), "SIG"))
	if sig == 0 {
		return OnUpgrade{}, fmt.Errorf("on_upgrade %q: unknown signal %q", s, name)
	}
	return OnUpgrade{Action: UpgradeSignal, Signal: sig}, nil
}

// String is what ParseOnUpgrade reads.
func (o OnUpgrade) String() string {
	if o.Action == UpgradeSignal {
		return UpgradeSignal + ":" + strings.TrimPrefix(unix.SignalName(o.Signal), "SIG")
	}
	if o.Action == "" {
		return UpgradeRestart
	}
	return o.Action
}

// UnmarshalText parses on_upgrade from TOML.
func (o *OnUpgrade) UnmarshalText(b []byte) error {
	v, err := ParseOnUpgrade(string(b))
	if err == nil {
		*o = v
	}
	return err
}

// MarshalText writes what UnmarshalText reads.
func (o OnUpgrade) MarshalText() ([]byte, error) { return []byte(o.String()), nil }

// Notify says when bpfsup tells systemd it is ready: "" (once the
// application started) or NotifyChild (once the application says READY=1).
type Notify string

// NotifyChild waits for the application's own READY=1.
const NotifyChild Notify = "child"

// ParseNotify parses a notify mode; "none" is "".
func ParseNotify(s string) (Notify, error) {
	switch s {
	case "", "none":
		return "", nil
	case string(NotifyChild):
		return NotifyChild, nil
	}
	return "", fmt.Errorf("notify %q: must be \"child\" or empty", s)
}

// NotifyAccess is whose messages the application's notify socket takes,
// as systemd's NotifyAccess=.
type NotifyAccess string

// Notify access modes. The empty NotifyAccess is NotifyAccessMain.
const (
	// NotifyAccessMain: the application alone (its pid).
	NotifyAccessMain NotifyAccess = "main"
	// NotifyAccessAll: the application and its descendants.
	NotifyAccessAll NotifyAccess = "all"
)

// ParseNotifyAccess parses a notify access mode; "" is NotifyAccessMain.
func ParseNotifyAccess(s string) (NotifyAccess, error) {
	switch a := NotifyAccess(s); a {
	case "", NotifyAccessMain:
		return NotifyAccessMain, nil
	case NotifyAccessAll:
		return a, nil
	}
	return "", fmt.Errorf("notify_access %q: must be %q (the child alone) or %q (the child and its descendants)", s, NotifyAccessMain, NotifyAccessAll)
}
