package config

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// Object is one BPF object to install.
type Object struct {
	// Path of the ELF file.
	Path string `toml:"path" json:"path"`
	// Name of the object in the pin layout; the file name up to its first
	// dot when empty.
	Name string `toml:"name" json:"name,omitempty"`
	// Variables sets global variables (volatile const or not) before loading.
	Variables map[string]any `toml:"variables" json:"variables,omitempty"`
	// Attach lists the object's attachments.
	Attach []Attach `toml:"attach" json:"attach,omitempty"`
	// Maps configures maps by name.
	Maps map[string]Map `toml:"maps" json:"maps,omitempty"`
	// Programs configures programs by name.
	Programs map[string]Program `toml:"programs" json:"programs,omitempty"`
	// HandoffLinks hands the object's links to the child too.
	HandoffLinks bool `toml:"handoff_links" json:"handoff_links,omitempty"`
	// SHA256 is the digest, in hex, that the object file must have: it is
	// checked before the file is parsed, at every start and reload.
	SHA256 string `toml:"sha256" json:"sha256,omitempty"`
	// Signature is the path of the object's detached SSH signature
	// (ssh-keygen -Y sign -n bpfsup); the object's path with ".sig" when
	// empty, checked when that file exists.
	Signature string `toml:"signature" json:"signature,omitempty"`
	// TrustedKeys and RequireSignature are the run's (File.TrustedKeys,
	// File.RequireSignature), given to every object.
	TrustedKeys      []string `toml:"-" json:"trusted_keys,omitempty"`
	RequireSignature bool     `toml:"-" json:"require_signature,omitempty"`
}

// CheckSHA256 checks that s is a SHA-256 digest in hex, and returns it in
// lower case.
func CheckSHA256(s string) (string, error) {
	if len(s) != 2*sha256.Size {
		return "", fmt.Errorf("sha256 %q: %d characters, want %d hex digits", s, len(s), 2*sha256.Size)
	}
	if _, err := hex.DecodeString(s); err != nil {
		return "", fmt.Errorf("sha256 %q: not hex digits: %w", s, err)
	}
	return strings.ToLower(s), nil
}

// Attach attaches one program to one hook.
type Attach struct {
	// Program is the program's name in the object.
	Program string `toml:"program" json:"program"`
	// Hook is a hook spec: "xdp:veth0", "tcx/ingress:veth0".
	Hook string `toml:"hook" json:"hook"`
	// Netns is the network namespace of the hook's interface, by path; the
	// run's --netns when empty.
	Netns string `toml:"netns" json:"netns,omitempty"`
	// Name overrides the link's pin name.
	Name string `toml:"name" json:"name,omitempty"`
	// Order places the link on a hook that runs several programs in order
	// (tcx, netkit): "first" or "last" (the default). At most one of
	// Order, Before and After.
	Order string `toml:"order" json:"order,omitempty"`
	// Before places the link just before another: an attachment of this
	// configuration, "[OBJECT/]PROG", or the absolute path of a pinned link.
	Before string `toml:"before" json:"before,omitempty"`
	// After places the link just after another, named as Before's.
	After string `toml:"after" json:"after,omitempty"`
}

// Place is the attachment's place on its hook, checked: where ("first",
// "last", "before", "after"; "" when the configuration says nothing) and
// the anchor of before and after.
func (a Attach) Place() (where, anchor string, err error) {
	n := 0
	for _, s := range []string{a.Order, a.Before, a.After} {
		if s != "" {
			n++
		}
	}
	switch {
	case n > 1:
		return "", "", fmt.Errorf("attachment %s@%s: give one of order, before and after", a.Program, a.Hook)
	case a.Before != "":
		return "before", a.Before, nil
	case a.After != "":
		return "after", a.After, nil
	case a.Order == "" || a.Order == "first" || a.Order == "last":
		return a.Order, "", nil
	}
	return "", "", fmt.Errorf("attachment %s@%s: order %q: want \"first\" or \"last\" (or before = / after = another attachment)", a.Program, a.Hook, a.Order)
}

// ParsePlace parses the command line's form of a place, the suffix of
// -a PROG@HOOK,PLACE: "first", "last", "before=X" or "after=X".
func ParsePlace(s string) (Attach, error) {
	var a Attach
	switch {
	case s == "first" || s == "last":
		a.Order = s
	case strings.HasPrefix(s, "before=") && len(s) > len("before="):
		a.Before = strings.TrimPrefix(s, "before=")
	case strings.HasPrefix(s, "after=") && len(s) > len("after="):
		a.After = strings.TrimPrefix(s, "after=")
	default:
		return a, fmt.Errorf("place %q: want first, last, before=X or after=X", s)
	}
	return a, nil
}

// Map configures one map.
type Map struct {
	// Access is how the map is handed to the child: rw (default), ro, wo, none.
	Access Access `toml:"access" json:"access,omitempty"`
	// PinPath pins the map somewhere else than in the object's directory.
	PinPath string `toml:"pin_path" json:"pin_path,omitempty"`
	// Reset allows an incompatible pinned map to be replaced by an empty one.
	Reset bool `toml:"reset" json:"reset,omitempty"`
	// Migrate = "copy" allows an incompatible pinned map to be replaced by a
	// copy in the new shape (same key and value sizes).
	Migrate Migrate `toml:"migrate" json:"migrate,omitempty"`
}

// Program configures one program.
type Program struct {
	// Handoff hands the program's fd to the child.
	Handoff bool `toml:"handoff" json:"handoff,omitempty"`
	// AutoAttach false leaves a program whose section names a whole hook
	// (SEC("tp/sched/sched_process_exec")) unattached unless an attachment
	// names it, as libbpf's bpf_program__set_autoattach(prog, false) does.
	AutoAttach *bool `toml:"autoattach" json:"autoattach,omitempty"`
}

// AutoAttaches reports whether the program attaches to its section's hook
// when no attachment names it.
func (c Program) AutoAttaches() bool { return c.AutoAttach == nil || *c.AutoAttach }

// Hash is a stable digest of the object's configuration, which the manifest
// records: a restart that finds it the same adopts without planning.
func (c Object) Hash() string {
	data, _ := json.Marshal(c)
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// Duration is a time.Duration that reads "100ms" from TOML. It is a struct
// so that a bare number (`stop_timeout = 10`) is refused rather than read
// as nanoseconds.
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}
