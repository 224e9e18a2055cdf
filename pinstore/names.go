package pinstore

import (
	"fmt"
	"path/filepath"
	"strings"
)

// The longest names bpfsup accepts, such that every file bpfsup makes for
// them fits the 255 bytes a file name may have, end to end: an object's
// temporary manifest is ".<object>.json.tmp" in the state directory; a pin
// is made in staging as "<kind>-<name>" and a foreign one moved aside as
// "foreign-programs-<name>".
const (
	// MaxObjectNameLen is the longest object name.
	MaxObjectNameLen = 255 - len(".json.tmp") - 1
	// MaxNameLen is the longest name of a map, program or link.
	MaxNameLen = 255 - len("foreign-programs-")
)

// CheckName reports whether name may be used as one path element of the pin
// layout. kind says what the name is for ("object", "map", ...) and appears in
// the error. Only [A-Za-z0-9_-] is allowed: bpffs refuses '.', and anything
// else would make paths ambiguous or unportable. Names are never rewritten.
func CheckName(kind, name string) error {
	if name == "" {
		return fmt.Errorf("%s name is empty: %w", kind, ErrBadName)
	}
	limit := MaxNameLen
	if kind == "object" {
		limit = MaxObjectNameLen
	}
	if len(name) > limit {
		return fmt.Errorf("%s name %q is %d bytes, longer than %d: %w", kind, name, len(name), limit, ErrBadName)
	}
	for i, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-':
		default:
			return fmt.Errorf("%s name %q has %q at byte %d; only letters, digits, '_' and '-' are allowed: %w",
				kind, name, r, i, ErrBadName)
		}
	}
	return nil
}

// ObjectName is the default name of an object loaded from path: its file name
// up to the first dot ("/etc/fw.bpf.o" -> "fw").
func ObjectName(path string) string {
	base := filepath.Base(path)
	if i := strings.IndexByte(base, '.'); i >= 0 {
		base = base[:i]
	}
	return base
}

// IsInternalMap reports whether a map of an ELF is one the compiler made for
// global data (.rodata, .data, .bss, .kconfig and their named variants). Such
// maps belong to one load of a program: bpfsup neither pins nor hands them
// over, and their names are not checked.
func IsInternalMap(name string) bool {
	return strings.HasPrefix(name, ".")
}

// LinkName is the pin name of the link of program prog attached to target.
// The rule is stable: a program attached once has a link named like the
// program; a program attached several times has one link per attachment,
// named "<prog>-<target>" where every byte of target outside [A-Za-z0-9_-]
// becomes '_' (a target is an interface, a cgroup path or a function, not a
// name the user chose for bpffs). A config may name a link explicitly instead.
func LinkName(prog string, target string, attachedOnce bool) string {
	if attachedOnce || target == "" {
		return prog
	}
	b := []byte(target)
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			b[i] = '_'
		}
	}
	name := prog + "-" + strings.Trim(string(b), "_")
	if len(name) > MaxNameLen {
		name = name[:MaxNameLen]
	}
	return name
}
