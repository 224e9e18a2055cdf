package main

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/hooks"
	"github.com/bpfsup/bpfsup/pinstore"
)

var specCache = map[string]*ebpf.CollectionSpec{}

func loadSpec(path string) *ebpf.CollectionSpec {
	if s, ok := specCache[path]; ok {
		return s
	}
	s, err := ebpf.LoadCollectionSpec(path)
	if err != nil {
		s = nil
	}
	specCache[path] = s
	return s
}

func objectHasProgram(path, name string) bool {
	s := loadSpec(path)
	return s != nil && s.Programs[name] != nil
}

func objectHasMap(path, name string) bool {
	s := loadSpec(path)
	return s != nil && s.Maps[name] != nil
}

func closeOnExec(fd int) error {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC)
	return err
}

// Inspection is what `bpfsup inspect --json` prints.
type Inspection struct {
	Object   string           `json:"object"`
	Name     string           `json:"name"`
	Programs []ProgramSection `json:"programs"`
	Maps     []MapSection     `json:"maps"`
}

// ProgramSection is one program of an object.
type ProgramSection struct {
	Name       string `json:"name"`
	Section    string `json:"section"`
	Type       string `json:"type"`
	AttachType string `json:"attach_type"`
	AttachTo   string `json:"attach_to,omitempty"`
	// Hook is the hook the section names (hooks.FromSection): a whole spec
	// ("tracepoint:sched/sched_process_exec"), attached without -a, or a
	// kind of hook ("xdp") that takes its target from -a PROG@TARGET.
	Hook string `json:"hook,omitempty"`
	// HookNeedsTarget says that Hook lacks its target.
	HookNeedsTarget bool `json:"hook_needs_target,omitempty"`
	// NoHook says why the section names no hook bpfsup attaches.
	NoHook string `json:"no_hook,omitempty"`
}

// inferHook fills the hook fields of p from its section.
func inferHook(p *ProgramSection) {
	inf, err := hooks.FromSection(p.Section)
	if err != nil {
		// The reason, without the sentinel every such error ends with.
		p.NoHook = strings.TrimSuffix(err.Error(), ": "+hooks.ErrUnknownHook.Error())
		return
	}
	p.Hook, p.HookNeedsTarget = inf.Spec.String(), inf.NeedsTarget
}

// hookText is the hook column of the text output.
func (p ProgramSection) hookText() string {
	switch {
	case p.NoHook != "":
		return "no hook (" + p.NoHook + ")"
	case p.HookNeedsTarget:
		return p.Hook + " (needs a target: -a " + p.Name + "@TARGET)"
	default:
		return p.Hook + " (attached without -a)"
	}
}

// MapSection is one map of an object.
type MapSection struct {
	Name       string `json:"name"`
	Type       string `json:"type"`
	KeySize    uint32 `json:"key_size"`
	ValueSize  uint32 `json:"value_size"`
	MaxEntries uint32 `json:"max_entries"`
	Pinning    string `json:"pinning"`
	Internal   bool   `json:"internal,omitempty"`
	// Slots are the slots the declaration fills with programs (a prog
	// array: tail calls) or maps (a map of maps), which bpfsup fills.
	Slots []MapSlot `json:"slots,omitempty"`
}

// MapSlot is one slot a map's declaration fills.
type MapSlot struct {
	Key  any    `json:"key"`
	Name string `json:"name"`
}

func inspectCmd() *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "inspect OBJECT",
		Short: "List an object's programs (section, type) and maps (type, sizes, pinning)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := ebpf.LoadCollectionSpec(args[0])
			if err != nil {
				return fmt.Errorf("object %s: %w", args[0], err)
			}
			ins := Inspection{Object: args[0], Name: pinstore.ObjectName(args[0]), Programs: []ProgramSection{}, Maps: []MapSection{}}
			for name, p := range spec.Programs {
				ps := ProgramSection{Name: name, Section: p.SectionName, Type: p.Type.String(),
					AttachType: p.AttachType.String(), AttachTo: p.AttachTo}
				inferHook(&ps)
				ins.Programs = append(ins.Programs, ps)
			}
			sort.Slice(ins.Programs, func(i, j int) bool { return ins.Programs[i].Name < ins.Programs[j].Name })
			for name, m := range spec.Maps {
				pin := "none"
				if m.Pinning == ebpf.PinByName {
					pin = "by-name (bpfsup pins every map in its own layout)"
				}
				ms := MapSection{Name: name, Type: m.Type.String(), KeySize: m.KeySize, ValueSize: m.ValueSize,
					MaxEntries: m.MaxEntries, Pinning: pin, Internal: pinstore.IsInternalMap(name)}
				for _, ref := range pinstore.References(m) {
					ms.Slots = append(ms.Slots, MapSlot{Key: ref.Key, Name: ref.Name})
				}
				ins.Maps = append(ins.Maps, ms)
			}
			sort.Slice(ins.Maps, func(i, j int) bool { return ins.Maps[i].Name < ins.Maps[j].Name })
			if asJSON {
				b, _ := json.MarshalIndent(ins, "", "  ")
				fmt.Println(string(b))
				return nil
			}
			fmt.Printf("object %s (name %s)\n", ins.Object, ins.Name)
			for _, p := range ins.Programs {
				fmt.Printf("  program %-20s section %-24s type %s attach %s hook %s\n", p.Name, p.Section, p.Type, p.AttachType, p.hookText())
			}
			for _, m := range ins.Maps {
				fmt.Printf("  map     %-20s %s key %d value %d max %d pinning %s\n", m.Name, m.Type, m.KeySize, m.ValueSize, m.MaxEntries, m.Pinning)
				for _, sl := range m.Slots {
					fmt.Printf("          slot %v: %s (filled by bpfsup)\n", sl.Key, sl.Name)
				}
			}
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return c
}
