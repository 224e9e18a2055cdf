package supervisor

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
)

// ObjectConfig is one BPF object to install.
type ObjectConfig struct {
	// Path of the ELF file.
	Path string `toml:"path" json:"path"`
	// Name of the object in the pin layout; the file name up to its first
	// dot when empty.
	Name string `toml:"name" json:"name,omitempty"`
	// Variables sets global variables (volatile const or not) before loading.
	Variables map[string]any `toml:"variables" json:"variables,omitempty"`
	// Attach lists the object's attachments.
	Attach []AttachConfig `toml:"attach" json:"attach,omitempty"`
	// Maps configures maps by name.
	Maps map[string]MapConfig `toml:"maps" json:"maps,omitempty"`
	// Programs configures programs by name.
	Programs map[string]ProgramConfig `toml:"programs" json:"programs,omitempty"`
	// HandoffLinks hands the object's links to the child too.
	HandoffLinks bool `toml:"handoff_links" json:"handoff_links,omitempty"`
}

// AttachConfig attaches one program to one hook.
type AttachConfig struct {
	// Program is the program's name in the object.
	Program string `toml:"program" json:"program"`
	// Hook is a hook spec: "xdp:veth0", "tcx/ingress:veth0".
	Hook string `toml:"hook" json:"hook"`
	// Netns is the network namespace of the hook's interface, by path; the
	// run's --netns when empty.
	Netns string `toml:"netns" json:"netns,omitempty"`
	// Name overrides the link's pin name.
	Name string `toml:"name" json:"name,omitempty"`
}

// MapConfig configures one map.
type MapConfig struct {
	// Access is how the map is handed to the child: rw (default), ro, wo, none.
	Access string `toml:"access" json:"access,omitempty"`
	// PinPath pins the map somewhere else than in the object's directory.
	PinPath string `toml:"pin_path" json:"pin_path,omitempty"`
	// Reset allows an incompatible pinned map to be replaced by an empty one.
	Reset bool `toml:"reset" json:"reset,omitempty"`
	// Migrate = "copy" allows an incompatible pinned map to be replaced by a
	// copy in the new shape (same key and value sizes).
	Migrate string `toml:"migrate" json:"migrate,omitempty"`
}

// ProgramConfig configures one program.
type ProgramConfig struct {
	// Handoff hands the program's fd to the child.
	Handoff bool `toml:"handoff" json:"handoff,omitempty"`
	// AutoAttach false leaves a program whose section names a whole hook
	// (SEC("tp/sched/sched_process_exec")) unattached unless an attachment
	// names it, as libbpf's bpf_program__set_autoattach(prog, false) does.
	AutoAttach *bool `toml:"autoattach" json:"autoattach,omitempty"`
}

// autoAttach reports whether the program attaches to its section's hook
// when no attachment names it.
func (c ProgramConfig) autoAttach() bool { return c.AutoAttach == nil || *c.AutoAttach }

// Map access modes.
const (
	AccessRW   = "rw"
	AccessRO   = "ro"
	AccessWO   = "wo"
	AccessNone = "none"
)

func checkAccess(a string) error {
	switch a {
	case "", AccessRW, AccessRO, AccessWO, AccessNone:
		return nil
	}
	return fmt.Errorf("access %q: must be rw, ro, wo or none", a)
}

// hash is a stable digest of the object's configuration, for the manifest.
func (c ObjectConfig) hash() string {
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
