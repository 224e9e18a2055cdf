package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/bpfsup/bpfsup/kernels/vmplan"
)

// systemd mode (-systemd, `make systemd`, kernels/systemd.sh): each VM boots
// a Debian root file system with systemd as PID 1 and runs the cases of
// kernels/systemdvm in that one boot; the host prints a table of the cases
// by systemd version.

// systemdSpec is one VM of systemd mode: a suite's kernel and root file
// system (an uncompressed cpio archive, kernels/systemd.sh makes it).
type systemdSpec struct {
	kernelSpec
	rootfs string
}

const (
	sdPackage = "kernels/systemdvm"
	sdBin     = "/vmtest/bin/systemdvm.test"
	sdDeb     = "/vmtest/bpfsup.deb"
	sdRunner  = "/vmtest/run.sh"
	sdUnit    = "systemdvm-cases.service"
)

// sdRunScript is what systemd starts once the system is up (sdUnitText):
// the cases, between the markers readConsole reads, then power-off.
const sdRunScript = `#!/bin/sh
echo "vminit: kernel $(uname -r), $(systemctl --version | head -1)"
echo "` + vmplan.MarkStart + ` systemd"
t0=$(date +%s.%N)
cd /vmtest
` + sdBin + ` -test.v -test.timeout=@TIMEOUT@ @RUN@
rc=$?
t1=$(date +%s.%N)
echo "` + vmplan.MarkEnd + ` systemd exit=$rc seconds=$(awk "BEGIN{print $t1 - $t0}") leaks=0"
echo "` + vmplan.MarkDone + `"
systemctl poweroff --force --force
`

const sdUnitText = `[Unit]
Description=bpfsup's cases under systemd (make systemd)
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/bin/sh ` + sdRunner + `
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
[Install]
WantedBy=default.target
`

// runSystemd is systemd mode's run.
func runSystemd(o options, specs []systemdSpec, deb string) int {
	began := time.Now()
	repo, err := repoRoot()
	if err != nil {
		return fail(err)
	}
	work := o.work
	if work == "" {
		if work, err = os.MkdirTemp("", "bpfsup-vmtest-"); err != nil {
			return fail(err)
		}
		defer os.RemoveAll(work)
	}
	bin := filepath.Join(work, "systemdvm.test")
	if err := goBuild(repo, "test", "-c", "-tags", "systemdvm", "-ldflags", "-s -w", "-o", bin, "./"+sdPackage); err != nil {
		return fail(err)
	}
	results := make([]pkgResult, len(specs))
	errs := make([]error, len(specs))
	sem := make(chan struct{}, max(o.parallel, 1))
	var wg sync.WaitGroup
	for i, spec := range specs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			results[i], errs[i] = runSystemdVM(spec, sdRun{repo: repo, work: work, bin: bin, deb: deb, o: o})
		}()
	}
	wg.Wait()
	failed := systemdReport(os.Stdout, specs, results, errs)
	fmt.Printf("vmtest: %d VMs, wall time %s\n", len(specs), time.Since(began).Round(time.Second))
	if failed {
		return 1
	}
	return 0
}

// sdRun is what every VM of a systemd run shares: the checkout, the work
// directory, the cases' test binary, the package and the options.
type sdRun struct {
	repo, work, bin, deb string
	o                    options
}

func runSystemdVM(spec systemdSpec, r sdRun) (pkgResult, error) {
	o := r.o
	k, err := findKernel(spec.kernelSpec)
	if err != nil {
		return pkgResult{}, err
	}
	initrd, err := systemdInitramfs(k, spec.rootfs, r)
	if err != nil {
		return pkgResult{}, err
	}
	// rdinit: systemd is the initramfs's init, and the initramfs is the
	// whole system (no root= to switch to).
	cmdline := "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/lib/systemd/systemd systemd.show_status=0 " + o.cmdline
	res, err := boot(k, initrd, cmdline, []pkg{{name: "systemd"}}, o)
	if len(res) == 0 {
		return pkgResult{name: "systemd"}, err
	}
	return res[0], err
}

// systemdInitramfs writes the VM's initramfs: the suite's root file system,
// followed by a second archive (the kernel unpacks one after the other) with
// what this run adds: the .deb, the cases, the test objects, the modules and
// the unit that runs the cases.
func systemdInitramfs(k *kernel, rootfs string, sr sdRun) (string, error) {
	repo, work, bin, deb, o := sr.repo, sr.work, sr.bin, sr.deb, sr.o
	r := newInitramfs()
	r.file(sdBin, bin, 0o755)
	r.file(sdDeb, deb, 0o644)
	for _, obj := range []string{"dropfilter.bpf.o", "dropfilter_v2.bpf.o"} {
		r.file("/vmtest/bpf/"+obj, filepath.Join(repo, "bpf", obj), 0o644)
	}
	mods, err := k.modules(work)
	if err != nil {
		return "", err
	}
	plan := vmplan.Plan{Kernel: k.label}
	for _, host := range mods {
		vmPath := vmModDir + "/" + moduleName(host) + ".ko"
		r.file(vmPath, host, 0o644)
		plan.Modules = append(plan.Modules, vmPath)
	}
	data, err := json.MarshalIndent(plan, "", "  ")
	if err != nil {
		return "", err
	}
	r.bytes(vmplan.Path, data, 0o644)
	timeout := o.pkgTimeout
	run := ""
	if o.run != "" {
		run = "-test.run='" + o.run + "'"
	}
	script := strings.NewReplacer("@TIMEOUT@", timeout.String(), "@RUN@", run).Replace(sdRunScript)
	r.bytes(sdRunner, []byte(script), 0o755)
	r.bytes("/etc/systemd/system/"+sdUnit, []byte(sdUnitText), 0o644)
	r.symlink("/etc/systemd/system/default.target.wants/"+sdUnit, "../"+sdUnit)
	// No login prompts on the console the cases write to.
	for _, u := range []string{"serial-getty@ttyS0.service", "getty@tty1.service"} {
		r.symlink("/etc/systemd/system/"+u, "/dev/null")
	}

	path := filepath.Join(work, "initramfs-systemd-"+k.label+".cpio")
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	in, err := os.Open(rootfs)
	if err != nil {
		return "", err
	}
	defer in.Close()
	n, err := io.Copy(f, in)
	if err != nil {
		return "", err
	}
	// Archives follow each other at 4-byte boundaries.
	if _, err := f.Write(make([]byte, (4-n%4)%4)); err != nil {
		return "", err
	}
	if err := r.write(f); err != nil {
		return "", err
	}
	return path, f.Close()
}

var (
	caseLine = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): TestSystemd/(\S+) \(([\d.]+)s\)`)
	infoLine = regexp.MustCompile(`^` + "VMTEST-INFO" + ` (.*)`)
)

// systemdReport prints the failed cases' output, the VMs' notes and the
// table: case, then one column per VM. It reports whether anything failed.
func systemdReport(w io.Writer, specs []systemdSpec, results []pkgResult, errs []error) bool {
	failed := false
	var order []string
	seen := map[string]bool{}
	cells := make([]map[string]string, len(specs))
	for i, res := range results {
		cells[i] = map[string]string{}
		for _, l := range res.lines {
			if m := caseLine.FindStringSubmatch(l); m != nil {
				if !seen[m[2]] {
					seen[m[2]] = true
					order = append(order, m[2])
				}
				cells[i][m[2]] = fmt.Sprintf("%s %5ss", m[1], m[3])
			}
		}
		if !res.ok() {
			failed = true
			fmt.Fprintf(w, "==== %s: exit %d, failed: %s\n", specs[i].label, res.exit, strings.Join(res.failed, " "))
			for _, l := range failureOutput(res) {
				fmt.Fprintln(w, "    "+l)
			}
		}
	}
	fmt.Fprintln(w)
	for i, res := range results {
		for _, l := range res.lines {
			if m := infoLine.FindStringSubmatch(l); m != nil {
				fmt.Fprintf(w, "%-9s %s\n", specs[i].label, m[1])
			}
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%-42s", "CASE")
	for _, s := range specs {
		fmt.Fprintf(w, " %-14s", s.label)
	}
	fmt.Fprintln(w)
	for _, c := range order {
		fmt.Fprintf(w, "%-42s", c)
		for i := range specs {
			cell := cells[i][c]
			if cell == "" {
				cell = "-"
			}
			fmt.Fprintf(w, " %-14s", cell)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "%-42s", "(vm)")
	for i, res := range results {
		status := fmt.Sprintf("%s %5.0fs", map[bool]string{true: "PASS", false: "FAIL"}[res.ok() && errs[i] == nil], res.seconds)
		fmt.Fprintf(w, " %-14s", status)
	}
	fmt.Fprintln(w)
	for i, err := range errs {
		if err != nil {
			failed = true
			fmt.Fprintf(w, "%s: %v\n", specs[i].label, err)
		}
	}
	// Last, for CI that shows only the tail: why each failed case failed.
	for i, res := range results {
		for _, l := range failureMessages(res, 4, 300) {
			fmt.Fprintf(w, "systemd: %s %s\n", specs[i].label, l)
		}
	}
	return failed
}
