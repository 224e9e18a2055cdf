package handoff

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Environment variables of the protocol.
const (
	EnvListenFDs     = "LISTEN_FDS"
	EnvListenPID     = "LISTEN_PID"
	EnvListenFDNames = "LISTEN_FDNAMES"
	EnvPinRoot       = "BPFSUP_PIN_ROOT"
	// EnvListenPIDFDID is systemd's (v256) check beside LISTEN_PID: the
	// inode of a pidfd of the process the fds are for. The child never gets
	// the one bpfsup was given: a libsystemd that checks it would refuse
	// every fd.
	EnvListenPIDFDID = "LISTEN_PIDFDID"
)

// FirstFD is the first handed fd, as in sd_listen_fds(3).
const FirstFD = 3

// ErrNoHandoff means the process was not started with handed fds.
var ErrNoHandoff = errors.New("no fds handed to this process (LISTEN_FDS unset)")

// CheckName reports whether name can be used in LISTEN_FDNAMES: at most 255
// bytes, printable ASCII, no ':' (the separator).
func CheckName(name string) error {
	if name == "" || len(name) > 255 {
		return fmt.Errorf("fd name %q: must be 1 to 255 bytes", name)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c <= ' ' || c >= 0x7f || c == ':' {
			return fmt.Errorf("fd name %q: byte %#x at %d is not allowed", name, c, i)
		}
	}
	return nil
}

// EncodeNames joins names into a LISTEN_FDNAMES value.
func EncodeNames(names []string) (string, error) {
	for _, n := range names {
		if err := CheckName(n); err != nil {
			return "", err
		}
	}
	return strings.Join(names, ":"), nil
}

// Listen is a decoded socket-activation environment.
type Listen struct {
	// N is the number of fds, from FirstFD on.
	N int
	// Names holds one name per fd; "unknown" where none was given, as
	// sd_listen_fds_with_names(3) does.
	Names []string
}

// Decode reads the socket-activation variables of env (as from os.Environ)
// for the process pid. It returns ErrNoHandoff when LISTEN_FDS is unset, and
// an error naming the variable when one is malformed or LISTEN_PID is another
// process's.
func Decode(env []string, pid int) (Listen, error) {
	var fds, lpid, names string
	var haveFDs, haveNames bool
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		switch k {
		case EnvListenFDs:
			fds, haveFDs = v, true
		case EnvListenPID:
			lpid = v
		case EnvListenFDNames:
			names, haveNames = v, true
		}
	}
	if !haveFDs {
		return Listen{}, ErrNoHandoff
	}
	n, err := strconv.Atoi(fds)
	if err != nil || n < 0 || n > 65536 {
		return Listen{}, fmt.Errorf("%s=%q: not a count of fds", EnvListenFDs, fds)
	}
	if lpid != "" {
		p, err := strconv.Atoi(lpid)
		if err != nil || p <= 0 {
			return Listen{}, fmt.Errorf("%s=%q: not a pid", EnvListenPID, lpid)
		}
		if p != pid {
			return Listen{}, fmt.Errorf("%s=%d is not this process (%d): the fds were meant for another", EnvListenPID, p, pid)
		}
	}
	l := Listen{N: n, Names: make([]string, n)}
	for i := range l.Names {
		l.Names[i] = "unknown"
	}
	if haveNames && n > 0 {
		parts := strings.Split(names, ":")
		if len(parts) != n {
			return Listen{}, fmt.Errorf("%s has %d names for %d fds", EnvListenFDNames, len(parts), n)
		}
		for i, p := range parts {
			if p == "" {
				continue
			}
			if err := CheckName(p); err != nil {
				return Listen{}, fmt.Errorf("%s: %w", EnvListenFDNames, err)
			}
			l.Names[i] = p
		}
	}
	return l, nil
}
