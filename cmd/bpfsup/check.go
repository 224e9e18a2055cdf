package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/bpfsup/bpfsup/config"
	"github.com/bpfsup/bpfsup/converge"
)

// checkFlags are bpfsup check's flags: the objects as run takes them.
type checkFlags struct {
	sf                           storeFlags
	configPath, netns            string
	objects, attaches, mapAccess []string
	trustedKeys                  []string
	force, asJSON, requireSig    bool
}

// errCheckFailed is check's verdict that a start or reload would fail: the
// report said why, exit 1.
var errCheckFailed = errors.New("a start or reload would fail")

func checkCmd() *cobra.Command {
	var f checkFlags
	c := &cobra.Command{
		Use:   "check [-c FILE] [-o OBJECT]... [-a PROG@HOOK[:TARGET]]... [--json]",
		Short: "Say what a start or reload would do, without pinning or attaching anything",
		Long: `Check the objects a run with the same flags would install: parse them, load every
program through this kernel's verifier (instructions processed, verification
time, size; the verifier's last lines when it refuses), resolve every hook (the
interface or cgroup there, the hook supported), verify each file's sha256 and
signature as a start would, and, where the objects are pinned
already, say what a reload would do with each map (adopt, reset, migrate,
refuse) and each link (keep, update in place, make-before-break). Every program
loaded is released: nothing is pinned, attached or left behind.

Exits 0 when a start or reload would succeed, 1 when it would not, 2 on bad usage.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			objs, err := f.build(cmd)
			if err != nil {
				return err
			}
			res := converge.CheckObjects(f.sf.store(), objs, converge.PlanOptions{Netns: f.netns, Force: f.force})
			if f.asJSON {
				b, err := json.MarshalIndent(res, "", "  ")
				if err != nil {
					return err
				}
				fmt.Println(string(b))
			} else {
				fmt.Print(renderCheck(res))
			}
			if !res.OK {
				return loggedError{errCheckFailed}
			}
			return nil
		},
	}
	fl := c.Flags()
	fl.StringVarP(&f.configPath, "config", "c", "", "TOML configuration file")
	fl.StringArrayVarP(&f.objects, "object", "o", nil, "BPF ELF object (repeatable)")
	fl.StringArrayVarP(&f.attaches, "attach", "a", nil, "attach a program: [OBJECT/]PROG@HOOK[:TARGET] (repeatable)")
	fl.StringArrayVar(&f.mapAccess, "map-access", nil, "hand a map to the child as [OBJECT/]MAP=rw|ro|wo|none (repeatable)")
	fl.StringVar(&f.netns, "netns", "", "network namespace (path) of network hooks' interfaces")
	fl.StringArrayVar(&f.trustedKeys, "trusted-key", nil, "file of SSH public keys an object's signature must be by (repeatable)")
	fl.BoolVar(&f.requireSig, "require-signature", false, "an object without a signature would be refused")
	fl.BoolVar(&f.force, "force", false, "as run --force: foreign pins would be replaced")
	fl.BoolVar(&f.asJSON, "json", false, "print JSON")
	f.sf.add(c)
	return c
}

// build makes the objects to check from the file and the flags, as run
// does; a configuration that does not parse is the check's verdict (exit
// 1), a flag that names nothing bad usage (exit 2).
func (f *checkFlags) build(cmd *cobra.Command) ([]config.Object, error) {
	file, err := readConfig(f.configPath)
	if err != nil {
		return nil, err
	}
	fl := cmd.Flags()
	if !fl.Changed("pin-root") && file.PinRoot != "" {
		f.sf.pinRoot = file.PinRoot
	}
	if !fl.Changed("state-dir") && file.StateDir != "" {
		f.sf.stateDir = file.StateDir
	}
	if !fl.Changed("netns") && file.Netns != "" {
		f.netns = file.Netns
	}
	f.force = f.force || file.Force
	f.requireSig = f.requireSig || file.RequireSignature
	if !fl.Changed("trusted-key") {
		f.trustedKeys = file.TrustedKeys
	}
	objs := append([]config.Object(nil), file.Objects...)
	for _, o := range f.objects {
		objs = append(objs, config.Object{Path: o})
	}
	if len(objs) == 0 {
		return nil, usageError{errors.New("no BPF object given (-o OBJECT or [[object]] in the config)")}
	}
	objs, err = applyFlags(withSigning(objs, f.trustedKeys, f.requireSig), f.attaches, f.mapAccess)
	if err != nil {
		return nil, usageError{err}
	}
	return objs, nil
}

// renderCheck prints a check for people.
func renderCheck(res *converge.Check) string {
	var b strings.Builder
	for _, o := range res.Objects {
		fmt.Fprintf(&b, "object %s (%s)", o.Name, o.Path)
		if o.SHA256 != "" {
			fmt.Fprintf(&b, " sha256 %s", o.SHA256)
		}
		if o.Signer != "" {
			fmt.Fprintf(&b, " signed by %s", o.Signer)
		}
		b.WriteString("\n")
		for _, p := range o.Programs {
			renderProgram(&b, p)
		}
		for _, m := range o.Maps {
			fmt.Fprintf(&b, "  map     %-20s %s", m.Name, m.Action)
			if m.Why != "" {
				fmt.Fprintf(&b, " (%s)", m.Why)
			}
			b.WriteString("\n")
		}
		for _, l := range o.Links {
			fmt.Fprintf(&b, "  link    %-20s %s via %s", l.Name, l.Hook, l.Mechanism)
			if l.Reload != "" {
				fmt.Fprintf(&b, ", reload: %s", l.Reload)
			}
			if l.Error != "" {
				fmt.Fprintf(&b, ": %s", l.Error)
			}
			if l.Caveat != "" {
				fmt.Fprintf(&b, " (%s)", l.Caveat)
			}
			b.WriteString("\n")
		}
		for _, e := range o.Errors {
			fmt.Fprintf(&b, "  error: %s\n", strings.ReplaceAll(e, "\n", "\n    "))
		}
		if o.OK {
			b.WriteString("  ok\n")
		} else {
			b.WriteString("  WOULD FAIL\n")
		}
	}
	return b.String()
}

func renderProgram(b *strings.Builder, p converge.ProgramCheck) {
	if !p.Verified {
		fmt.Fprintf(b, "  program %-20s %s, %d instructions: refused\n", p.Name, p.Type, p.Instructions)
		for _, l := range p.VerifierLog {
			fmt.Fprintf(b, "    | %s\n", l)
		}
		return
	}
	fmt.Fprintf(b, "  program %-20s %s, %d instructions: verified, %d processed in %d us (load %d us), %d bytes xlated, %d jited",
		p.Name, p.Type, p.Instructions, p.InsnsProcessed, p.VerifyMicros, p.LoadMicros, p.XlatedBytes, p.JitedBytes)
	if p.Reload != "" {
		fmt.Fprintf(b, ", reload: %s", p.Reload)
		if p.Why != "" && p.Why != "nothing pinned" {
			fmt.Fprintf(b, " (%s)", p.Why)
		}
	}
	b.WriteString("\n")
}
