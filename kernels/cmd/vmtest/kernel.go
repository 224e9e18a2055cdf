package main

import (
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// wantedModules are the modules the tests need where the kernel builds them
// as modules: veth pairs, and tc's clsact qdisc with BPF filters (the tcx
// fallback). Their dependencies come along.
var wantedModules = []string{"veth", "sch_ingress", "cls_bpf"}

type kernelSpec struct {
	label string
	dir   string // an unpacked linux-image .deb
}

// kernel is a kernel found in an unpacked linux-image package.
type kernel struct {
	kernelSpec
	release string
	vmlinuz string
	config  string
	modDir  string
}

// findKernel finds the kernel in ks.dir: an unpacked linux-image package
// (boot/vmlinuz-REL, lib/modules/REL), or the packages sid splits a kernel
// into, unpacked into one directory (usr/lib/modules/REL/vmlinuz.unsigned,
// config and modules beside it).
func findKernel(ks kernelSpec) (*kernel, error) {
	k := &kernel{kernelSpec: ks}
	if matches, _ := filepath.Glob(filepath.Join(ks.dir, "boot", "vmlinuz-*")); len(matches) == 1 {
		k.vmlinuz = matches[0]
		k.release = strings.TrimPrefix(filepath.Base(k.vmlinuz), "vmlinuz-")
		k.config = filepath.Join(ks.dir, "boot", "config-"+k.release)
		k.modDir = filepath.Join(ks.dir, "lib", "modules", k.release)
	} else if matches, _ := filepath.Glob(filepath.Join(ks.dir, "usr", "lib", "modules", "*", "vmlinuz*")); len(matches) == 1 {
		k.vmlinuz = matches[0]
		k.modDir = filepath.Dir(k.vmlinuz)
		k.release = filepath.Base(k.modDir)
		k.config = filepath.Join(k.modDir, "config")
	} else {
		return nil, fmt.Errorf("kernel %s: want one boot/vmlinuz-* or usr/lib/modules/*/vmlinuz* in %s", ks.label, ks.dir)
	}
	if _, err := os.Stat(k.modDir); err != nil {
		return nil, fmt.Errorf("kernel %s: %w", ks.label, err)
	}
	return k, nil
}

// modules returns the module files to load for wantedModules, dependencies
// first, uncompressed on the host (decompressed into work when needed). The
// packages carry no modules.dep (depmod makes it at install): dependencies
// come from each module's .modinfo.
func (k *kernel) modules(work string) ([]string, error) {
	byName := map[string]string{} // "veth" -> "kernel/.../veth.ko.xz"
	err := filepath.WalkDir(k.modDir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.Contains(d.Name(), ".ko") {
			rel, _ := filepath.Rel(k.modDir, p)
			byName[moduleName(rel)] = rel
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", k.label, err)
	}
	builtin, _ := os.ReadFile(filepath.Join(k.modDir, "modules.builtin"))

	var order []string
	seen := map[string]bool{}
	var visit func(name string) error
	visit = func(name string) error {
		if seen[name] {
			return nil
		}
		seen[name] = true
		rel, ok := byName[name]
		if !ok {
			if strings.Contains(string(builtin), "/"+name+".ko\n") {
				return nil
			}
			return fmt.Errorf("kernel %s: module %s is neither a module nor built in", k.label, name)
		}
		file, err := k.moduleFile(rel, work)
		if err != nil {
			return err
		}
		deps, err := moduleDepends(file)
		if err != nil {
			return fmt.Errorf("kernel %s: %w", k.label, err)
		}
		for _, d := range deps {
			if err := visit(d); err != nil {
				return err
			}
		}
		order = append(order, file)
		return nil
	}
	for _, name := range wantedModules {
		if err := visit(name); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// moduleDepends reads the "depends=" entry of a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("module %s: no .modinfo", path)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	for _, kv := range strings.Split(string(data), "\x00") {
		if v, ok := strings.CutPrefix(kv, "depends="); ok {
			if v == "" {
				return nil, nil
			}
			return strings.Split(v, ","), nil
		}
	}
	return nil, nil
}

// moduleName is a module's name from its path: kernel/net/sched/cls_bpf.ko.xz -> cls_bpf.
func moduleName(path string) string {
	base := filepath.Base(path)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// moduleFile returns a host path of the module, uncompressed (finit_module
// takes compressed modules only with a flag 6.1 lacks), decompressing into
// work when needed.
func (k *kernel) moduleFile(rel, work string) (string, error) {
	src := filepath.Join(k.modDir, rel)
	var tool string
	switch {
	case strings.HasSuffix(rel, ".ko"):
		return src, nil
	case strings.HasSuffix(rel, ".ko.xz"):
		tool = "xz"
	case strings.HasSuffix(rel, ".ko.zst"):
		tool = "zstd"
	case strings.HasSuffix(rel, ".ko.gz"):
		tool = "gzip"
	default:
		return "", fmt.Errorf("module %s: unknown compression", rel)
	}
	dst := filepath.Join(work, "modules", k.label, moduleName(rel)+".ko")
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", err
	}
	out, err := os.Create(dst)
	if err != nil {
		return "", err
	}
	defer out.Close()
	cmd := exec.Command(tool, "-dc", src)
	cmd.Stdout = out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("decompress %s with %s: %w", rel, tool, err)
	}
	return dst, nil
}
