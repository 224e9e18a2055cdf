package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

const modulePath = "github.com/bpfsup/bpfsup"

// Where things go in the initramfs.
const (
	vmBinDir  = "/vmtest/bin"
	vmModDir  = "/vmtest/modules"
	vmBpfsup  = "/usr/local/bin/bpfsup"
	vmBusybox = "/usr/bin/busybox"
	// vmPrebuilt holds the repository's other main packages (test helpers,
	// examples), for testutil.GoBuild: the VM has no Go toolchain.
	vmPrebuilt = "/vmtest/prebuilt"
)

// pkg is a test package.
type pkg struct {
	importPath string
	name       string // relative to the module: "hooks", "e2e/crash"
	dir        string
}

// testPackages lists the packages matched by patterns (default ./...) that
// have tests, leaving out kernels/..., which is this host-side machinery.
func testPackages(repo string, patterns []string) ([]pkg, error) {
	if len(patterns) == 0 {
		patterns = []string{"./..."}
	}
	args := append([]string{"list", "-f", "{{.ImportPath}}|{{.Dir}}|{{len .TestGoFiles}}|{{len .XTestGoFiles}}"}, patterns...)
	cmd := exec.Command("go", args...)
	cmd.Dir = repo
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list: %w", errOutput(err))
	}
	var pkgs []pkg
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, "|")
		if len(f) != 4 || (f[2] == "0" && f[3] == "0") {
			continue
		}
		name := strings.TrimPrefix(strings.TrimPrefix(f[0], modulePath), "/")
		if name == "" {
			name = "."
		}
		if name == "kernels" || strings.HasPrefix(name, "kernels/") {
			continue
		}
		pkgs = append(pkgs, pkg{importPath: f[0], name: name, dir: f[1]})
	}
	return pkgs, nil
}

func errOutput(err error) error {
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
	}
	return err
}

// built is what build made on the host.
type built struct {
	init     string
	bpfsup   string
	tests    map[string]string // package name -> test binary
	prebuilt map[string]string // testutil.PrebuiltName -> binary
}

func binName(p pkg) string {
	return strings.NewReplacer("/", "_", ".", "root").Replace(p.name) + ".test"
}

// build compiles /init, bpfsup and one test binary per package, statically.
func build(repo, work string, pkgs []pkg) (*built, error) {
	b := &built{
		init:   filepath.Join(work, "init"),
		bpfsup: filepath.Join(work, "bpfsup"),
		tests:  map[string]string{},
		// Filled below.
		prebuilt: map[string]string{},
	}
	goCmd := func(args ...string) error { return goBuild(repo, args...) }
	// -s -w: a smaller initramfs; the tables for stack traces stay.
	if err := goCmd("build", "-ldflags", "-s -w", "-o", b.init, "./kernels/init"); err != nil {
		return nil, err
	}
	if err := goCmd("build", "-ldflags", "-s -w -X main.version=vmtest", "-o", b.bpfsup, "./cmd/bpfsup"); err != nil {
		return nil, err
	}
	for _, p := range pkgs {
		out := filepath.Join(work, "tests", binName(p))
		if err := goCmd("test", "-c", "-ldflags", "-s -w", "-o", out, p.importPath); err != nil {
			return nil, err
		}
		b.tests[p.name] = out
	}
	// The versions of bpfsup the self-upgrade test swaps between.
	for _, v := range testutil.BpfsupVersions {
		name := testutil.PrebuiltBpfsupName(v)
		out := filepath.Join(work, "prebuilt", name)
		if err := goCmd("build", "-ldflags", "-s -w -X main.version="+v, "-o", out, "./cmd/bpfsup"); err != nil {
			return nil, err
		}
		b.prebuilt[name] = out
	}
	mains, err := mainPackages(repo)
	if err != nil {
		return nil, err
	}
	for _, rel := range mains {
		name := testutil.PrebuiltName(rel)
		out := filepath.Join(work, "prebuilt", name)
		// With symbols: tests put uprobes on them.
		if err := goCmd("build", "-o", out, "./"+rel); err != nil {
			return nil, err
		}
		b.prebuilt[name] = out
	}
	return b, nil
}

// goBuild runs the go command in repo, without cgo: static binaries.
func goBuild(repo string, args ...string) error {
	cmd := exec.Command("go", args...)
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return nil
}

// mainPackages lists the repository's commands other than bpfsup and this
// machinery, relative to the repository: "e2e/hooks/hookshelper".
func mainPackages(repo string) ([]string, error) {
	cmd := exec.Command("go", "list", "-f", `{{if eq .Name "main"}}{{.ImportPath}}{{end}}`, "./...")
	cmd.Dir = repo
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list: %w", errOutput(err))
	}
	var rels []string
	for _, ip := range strings.Fields(string(out)) {
		rel := strings.TrimPrefix(strings.TrimPrefix(ip, modulePath), "/")
		if rel == "" || rel == "cmd/bpfsup" || rel == "kernels" || strings.HasPrefix(rel, "kernels/") {
			continue
		}
		rels = append(rels, rel)
	}
	return rels, nil
}

// commonFiles is the part of the initramfs every kernel shares.
func commonFiles(repo string, b *built, o options) (*initramfs, error) {
	r := newInitramfs()
	r.file("/init", b.init, 0o755)
	r.file(vmBpfsup, b.bpfsup, 0o755)
	for _, bin := range b.tests {
		r.file(vmBinDir+"/"+filepath.Base(bin), bin, 0o755)
	}
	for name, bin := range b.prebuilt {
		r.file(vmPrebuilt+"/"+name, bin, 0o755)
	}
	for _, d := range []string{"/root", "/tmp", "/run", "/proc", "/sys", "/dev", "/etc", "/var/tmp"} {
		r.dir(d)
	}
	for _, f := range []string{"/etc/passwd", "/etc/group", "/etc/hosts", "/etc/protocols", "/etc/services"} {
		if _, err := os.Stat(f); err == nil {
			r.file(f, f, 0o644)
		}
	}
	if err := addRepo(r, repo); err != nil {
		return nil, err
	}
	// The host's merged /usr (/bin -> usr/bin ...), so that paths such as
	// /bin/sleep name the same programs as on the host.
	for _, d := range []string{"/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32"} {
		if target, err := os.Readlink(d); err == nil {
			r.symlink(d, target)
		}
	}
	// Programs tests run, from the host with their libraries: the shells
	// and coreutils (tests look at /proc/PID/exe and copy /bin/true), grep
	// and sed; iproute2's ip and tc for the namespace and veth helpers;
	// bpftool where tests look at what is attached; iputils' ping, whose
	// output tests read; systemd-notify and systemd-socket-activate, which
	// work without systemd running; getent, bpfsup's way to NSS users;
	// ssh-keygen, which makes the keys and signatures of signed objects.
	var programs []string
	for _, pkg := range []string{"coreutils", "dash", "bash", "grep", "sed"} {
		programs = append(programs, packagePrograms(pkg)...)
	}
	for _, tool := range []string{"sh", "ip", "tc", "bpftool", "ping", "systemd-notify", "systemd-socket-activate", "getent", "ssh-keygen"} {
		if path, err := exec.LookPath(tool); err == nil {
			programs = append(programs, path)
		} else if tool == "ip" {
			return nil, fmt.Errorf("iproute2's ip is needed on the host to put it in the VM: %w", err)
		}
	}
	for _, path := range programs {
		if err := addProgram(r, path); err != nil {
			return nil, err
		}
	}
	if err := addPython(r); err != nil {
		return nil, err
	}
	// Busybox for everything else.
	if o.busybox != "" {
		if err := addBusybox(r, o.busybox); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// addRepo copies the repository's files to the same path in the VM, so that
// paths compiled into the tests (runtime.Caller) and the tests' working
// directories are valid there. .git and build output stay out.
func addRepo(r *initramfs, repo string) error {
	return filepath.WalkDir(repo, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(repo, p)
		if d.IsDir() {
			switch rel {
			case ".git", "bin":
				return filepath.SkipDir
			}
			r.dir(p)
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case info.Mode().IsRegular():
			if info.Size() > 4<<20 {
				// Build output (a stray binary), not test data.
				return nil
			}
			r.file(p, p, uint32(info.Mode().Perm()))
		case info.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			r.symlink(p, target)
		}
		return nil
	})
}

// addBusybox installs busybox with a link for each of its applets that the
// initramfs has no program for.
func addBusybox(r *initramfs, busybox string) error {
	out, err := exec.Command(busybox, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("busybox --list-full: %w", err)
	}
	r.file(r.canon(vmBusybox), busybox, 0o755)
	for _, applet := range strings.Fields(string(out)) {
		p := r.canon("/" + applet)
		if filepath.Base(p) == "linuxrc" || filepath.Base(p) == "init" || r.has(p) {
			continue
		}
		r.symlink(p, r.canon(vmBusybox))
	}
	return nil
}

// packagePrograms lists the programs a Debian package installed on the host
// (none when dpkg does not know it).
func packagePrograms(pkg string) []string {
	out, err := exec.Command("dpkg-query", "-L", pkg).Output()
	if err != nil {
		return nil
	}
	var paths []string
	for _, p := range strings.Fields(string(out)) {
		if dir := filepath.Dir(p); dir == "/bin" || dir == "/sbin" || dir == "/usr/bin" || dir == "/usr/sbin" {
			paths = append(paths, p)
		}
	}
	return paths
}

// addProgram adds a host program at its path: a symlink as a symlink (and
// what it points to), a file with the libraries it loads.
func addProgram(r *initramfs, path string) error {
	info, err := os.Lstat(path)
	if err != nil {
		return nil // listed by its package, but not there
	}
	if info.Mode()&os.ModeSymlink != 0 {
		target, err := os.Readlink(path)
		if err != nil {
			return err
		}
		r.symlink(path, target)
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(path), target)
		}
		return addProgram(r, target)
	}
	if !info.Mode().IsRegular() {
		return nil
	}
	return addDynamic(r, path)
}

// pythonModules is run by the host's python3 to list the files a child
// written in Python with python-systemd loads (the hand-off test's child,
// e2e/skeleton): its imports, used the way the child uses them, and what
// the interpreter loads at start.
const pythonModules = `
import ctypes, json, os, platform, struct, sys, time
from systemd import daemon
platform.machine()
ctypes.CDLL(None, use_errno=True)
json.dumps({"x": 1})
for m in list(sys.modules.values()):
    f = getattr(m, "__file__", None)
    if f:
        print(os.path.realpath(f))
`

// addPython adds the host's /usr/bin/python3 and the files of its standard
// library and of python-systemd that a hand-off child needs, when the host
// has both; without them the test that needs them skips, saying so.
func addPython(r *initramfs) error {
	const python = "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		return nil
	}
	out, err := exec.Command(python, "-c", pythonModules).Output()
	if err != nil {
		return nil // no python3-systemd on the host
	}
	if err := addProgram(r, python); err != nil {
		return err
	}
	for _, f := range strings.Fields(string(out)) {
		if strings.HasSuffix(f, ".so") {
			if err := addDynamic(r, f); err != nil {
				return err
			}
			continue
		}
		r.file(f, f, 0o644)
	}
	// Python finds its library by these landmarks.
	out, err = exec.Command(python, "-c", "import os, sysconfig; print(sysconfig.get_path('stdlib')); print(sysconfig.get_path('platstdlib'))").Output()
	if err != nil {
		return fmt.Errorf("python3 paths: %w", err)
	}
	for _, dir := range strings.Fields(string(out)) {
		r.dir(dir)
		r.dir(filepath.Join(dir, "lib-dynload"))
		if _, err := os.Stat(filepath.Join(dir, "os.py")); err == nil {
			r.file(filepath.Join(dir, "os.py"), filepath.Join(dir, "os.py"), 0o644)
		}
	}
	return nil
}

var lddLine = regexp.MustCompile(`(?:=>\s*)?(/\S+)\s+\(0x`)

// addDynamic adds a dynamically linked program and the libraries ldd says
// it loads, each at its path on the host.
func addDynamic(r *initramfs, path string) error {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return err
	}
	r.file(path, real, 0o755)
	out, err := exec.Command("ldd", real).Output()
	if err != nil {
		// A static program: nothing more to copy.
		return nil
	}
	for _, line := range strings.Split(string(out), "\n") {
		m := lddLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		lib := m[1]
		src, err := filepath.EvalSymlinks(lib)
		if err != nil {
			return fmt.Errorf("library %s of %s: %w", lib, path, err)
		}
		r.file(lib, src, 0o755)
	}
	return nil
}
