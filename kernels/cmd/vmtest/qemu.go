package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bpfsup/bpfsup/kernels/vmplan"
)

// pkgResult is what one test binary did on one kernel.
type pkgResult struct {
	name             string
	started, ended   bool
	exit             int
	seconds          float64
	leaks            int
	pass, fail, skip int
	failed           []string // names of failed tests
	skips            []string // "TestX: reason"
	leakLines        []string
	lines            []string // the package's output
}

func (r *pkgResult) ok() bool {
	return r.ended && r.exit == 0 && r.fail == 0 && r.leaks == 0
}

// runKernel boots one VM that runs every package, and reads back the results.
func runKernel(ks kernelSpec, common *initramfs, pkgs []pkg, b *built, work string, o options) ([]pkgResult, error) {
	k, err := findKernel(ks)
	if err != nil {
		return nil, err
	}
	initrd, err := kernelInitramfs(k, common, pkgs, b, work, o)
	if err != nil {
		return nil, err
	}
	cmdline := "console=ttyS0 panic=-1 quiet lsm=lockdown,capability,yama,bpf " + o.cmdline
	return boot(k, initrd, cmdline, pkgs, o)
}

// boot boots kernel k with initrd under qemu's software emulation, reads
// the results of pkgs back from its console, and waits for it to power off.
func boot(k *kernel, initrd, cmdline string, pkgs []pkg, o options) ([]pkgResult, error) {
	if err := os.MkdirAll(o.logs, 0o755); err != nil {
		return nil, err
	}
	logPath := filepath.Join(o.logs, "vmtest-"+k.label+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()

	ctx, cancel := context.WithTimeout(context.Background(), o.vmTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-accel", "tcg,thread=multi", "-cpu", o.cpu,
		"-m", o.mem, "-smp", strconv.Itoa(o.smp),
		"-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
		"-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
		"-kernel", k.vmlinuz, "-initrd", initrd, "-append", cmdline)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = logFile
	logf("[%s] booting %s (%s); console log: %s", k.label, k.release, filepath.Base(k.vmlinuz), logPath)
	began := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	results, done := readConsole(io.TeeReader(stdout, logFile), pkgs, k.label, began)
	werr := cmd.Wait()
	elapsed := time.Since(began).Round(time.Second)
	switch {
	case ctx.Err() != nil:
		return results, fmt.Errorf("VM killed after %s (-vm-timeout)", o.vmTimeout)
	case !done:
		return results, fmt.Errorf("VM ended after %s before /init said it was done (qemu: %v); see %s", elapsed, werr, logPath)
	}
	logf("[%s] VM done in %s", k.label, elapsed)
	return results, nil
}

// kernelInitramfs writes the initramfs for kernel k: the common files, the
// kernel's modules and config, and the plan.
func kernelInitramfs(k *kernel, common *initramfs, pkgs []pkg, b *built, work string, o options) (string, error) {
	r := newInitramfs()
	for p, e := range common.entries {
		r.entries[p] = e
	}
	mods, err := k.modules(work)
	if err != nil {
		return "", err
	}
	plan := vmplan.Plan{
		Kernel: k.label,
		Env: []string{
			"BPFSUP_TEST_BIN=" + vmBpfsup,
			"BPFSUP_TEST_PREBUILT=" + vmPrebuilt,
			"BPFSUP_TEST_VM=" + k.label,
		},
	}
	for _, host := range mods {
		vmPath := vmModDir + "/" + moduleName(host) + ".ko"
		r.file(vmPath, host, 0o644)
		plan.Modules = append(plan.Modules, vmPath)
	}
	if _, err := os.Stat(k.config); err == nil {
		// Feature checks read the kernel's configuration here, as on Debian.
		r.file("/boot/config-"+k.release, k.config, 0o644)
	}
	args := []string{"-test.v", "-test.timeout=" + o.pkgTimeout.String()}
	if o.short {
		args = append(args, "-test.short")
	}
	if o.run != "" {
		args = append(args, "-test.run="+o.run)
	}
	args = append(args, o.extraArgs...)
	for _, p := range pkgs {
		plan.Packages = append(plan.Packages, vmplan.Package{
			Name:           p.name,
			Bin:            vmBinDir + "/" + filepath.Base(b.tests[p.name]),
			Dir:            p.dir,
			Args:           args,
			TimeoutSeconds: int((o.pkgTimeout + 2*time.Minute).Seconds()),
		})
	}
	data, err := json.MarshalIndent(plan, "", "  ")
	if err != nil {
		return "", err
	}
	r.bytes(vmplan.Path, data, 0o644)

	path := filepath.Join(work, "initramfs-"+k.label+".cpio")
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	// Uncompressed: unpacking gzip under software emulation costs more
	// than the copy it saves.
	if err := r.write(f); err != nil {
		return "", err
	}
	return path, f.Close()
}

var (
	resultLine = regexp.MustCompile(`^--- (PASS|FAIL|SKIP): (\S+)`)
	// subSkipLine is a skipped subtest: listed with its reason, not counted.
	subSkipLine = regexp.MustCompile(`^\s+--- SKIP: (\S+)`)
	runLine     = regexp.MustCompile(`^=== (?:RUN|CONT|NAME)\s+(\S+)`)
	logLine     = regexp.MustCompile(`^\s+\S+\.go:\d+: `)
	endLine     = regexp.MustCompile(`exit=(-?\d+) seconds=([\d.]+) leaks=(\d+)`)
)

// readConsole reads the VM's console until it closes, and returns the
// results per package in plan order and whether /init reached its end.
func readConsole(r io.Reader, pkgs []pkg, label string, began time.Time) ([]pkgResult, bool) {
	results := make([]pkgResult, len(pkgs))
	index := map[string]int{}
	for i, p := range pkgs {
		results[i].name = p.name
		index[p.name] = i
	}
	var cur *pkgResult
	// With -test.v, a test's log lines come as they are written, after
	// "=== RUN/CONT/NAME TestX" and before its "--- SKIP": the last one
	// is the reason for a skip.
	running := ""
	lastLog := map[string]string{}
	done := false
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if cur != nil {
			cur.lines = append(cur.lines, line)
		}
		fields := strings.Fields(line)
		switch {
		case len(fields) >= 2 && fields[0] == vmplan.MarkStart:
			if i, ok := index[fields[1]]; ok {
				cur = &results[i]
				cur.started = true
				running, lastLog = "", map[string]string{}
			}
		case len(fields) >= 2 && fields[0] == vmplan.MarkEnd:
			if i, ok := index[fields[1]]; ok {
				res := &results[i]
				if m := endLine.FindStringSubmatch(line); m != nil {
					res.exit, _ = strconv.Atoi(m[1])
					res.seconds, _ = strconv.ParseFloat(m[2], 64)
					res.leaks, _ = strconv.Atoi(m[3])
					res.ended = true
				}
				status := "ok"
				if !res.ok() {
					status = "FAIL"
				}
				logf("[%s] %-20s %-4s %6.1fs  pass %d fail %d skip %d", label, res.name, status, res.seconds, res.pass, res.fail, res.skip)
			}
			cur = nil
		case len(fields) >= 2 && fields[0] == vmplan.MarkLeak:
			if i, ok := index[fields[1]]; ok {
				results[i].leakLines = append(results[i].leakLines, line)
			}
		case len(fields) >= 1 && fields[0] == vmplan.MarkError:
			logf("[%s] /init: %s", label, line)
		case strings.Contains(line, "vminit: kernel "): // after the firmware's escape codes
			logf("[%s] booted in %s", label, time.Since(began).Round(100*time.Millisecond))
		case len(fields) >= 1 && fields[0] == vmplan.MarkDone:
			done = true
		case cur != nil:
			if m := runLine.FindStringSubmatch(line); m != nil {
				running = m[1]
			} else if logLine.MatchString(line) && running != "" {
				lastLog[running] = strings.TrimSpace(line)
			} else if m := resultLine.FindStringSubmatch(line); m != nil {
				switch m[1] {
				case "PASS":
					cur.pass++
				case "FAIL":
					cur.fail++
					cur.failed = append(cur.failed, m[2])
				case "SKIP":
					cur.skip++
					cur.skips = append(cur.skips, m[2]+": "+lastLog[m[2]])
				}
			} else if m := subSkipLine.FindStringSubmatch(line); m != nil {
				cur.skips = append(cur.skips, m[1]+": "+lastLog[m[1]])
			} else if strings.Contains(line, "Kernel panic") {
				logf("[%s] %s", label, line)
			}
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, os.ErrClosed) {
		logf("[%s] read console: %v", label, err)
	}
	return results, done
}

// report prints the result table and, for what failed, the evidence. It
// reports whether anything failed.
func report(w io.Writer, kernels []kernelSpec, pkgs []pkg, results [][]pkgResult, vmErrs []error) bool {
	failed := false
	fmt.Fprintln(w)
	for ki, ks := range kernels {
		for _, res := range results[ki] {
			if res.ok() {
				continue
			}
			failed = true
			fmt.Fprintf(w, "==== %s %s: ", ks.label, res.name)
			switch {
			case !res.started:
				fmt.Fprintln(w, "did not run")
				continue
			case !res.ended:
				fmt.Fprintln(w, "did not finish; its last output:")
			default:
				fmt.Fprintf(w, "exit %d, failed: %s\n", res.exit, strings.Join(res.failed, " "))
			}
			for _, l := range failureOutput(res) {
				fmt.Fprintln(w, "    "+l)
			}
			for _, l := range res.leakLines {
				fmt.Fprintln(w, "    "+l)
			}
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "skipped tests:")
	anySkip := false
	for ki, ks := range kernels {
		for _, res := range results[ki] {
			for _, s := range res.skips {
				anySkip = true
				fmt.Fprintf(w, "  %-5s %-18s %s\n", ks.label, res.name, s)
			}
		}
	}
	if !anySkip {
		fmt.Fprintln(w, "  none")
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "%-7s %-20s %-6s %5s %5s %5s %8s\n", "KERNEL", "PACKAGE", "RESULT", "PASS", "FAIL", "SKIP", "TIME")
	for ki, ks := range kernels {
		if vmErrs[ki] != nil {
			failed = true
			fmt.Fprintf(w, "%-7s %-20s %-6s %s\n", ks.label, "(vm)", "FAIL", vmErrs[ki])
		}
		for _, res := range results[ki] {
			status := "PASS"
			switch {
			case !res.started:
				status = "NORUN"
			case !res.ended:
				status = "DIED"
			case res.leaks > 0 && res.exit == 0 && res.fail == 0:
				status = "LEAK"
			case !res.ok():
				status = "FAIL"
			}
			fmt.Fprintf(w, "%-7s %-20s %-6s %5d %5d %5d %7.1fs\n", ks.label, res.name, status, res.pass, res.fail, res.skip, res.seconds)
		}
	}
	return failed
}

// failureMessages gives, for each failed test of res, the last n lines it
// printed itself (file.go:LINE: ...), each cut to width: the messages
// of its t.Error and t.Fatal are among them. A test with failed subtests
// gives theirs: the innermost that failed.
func failureMessages(res pkgResult, n, width int) []string {
	var out []string
	for _, name := range failedLeaves(res.lines, res.failed) {
		var msgs []string
		in := false
		for _, l := range res.lines {
			t := strings.TrimSpace(l)
			switch m := runLine.FindStringSubmatch(l); {
			case m != nil:
				in = m[1] == name // a test's output follows its RUN, CONT or NAME line
			case strings.HasPrefix(t, "--- "):
				in = false
			case in && testMessage.MatchString(t):
				if len(t) > width {
					t = t[:width] + "..."
				}
				msgs = append(msgs, name+": "+t)
			}
		}
		out = append(out, msgs[max(len(msgs)-n, 0):]...)
	}
	return out
}

// failedLeaves are the tests and subtests under the failed top-level tests
// that failed while none of their own subtests did.
func failedLeaves(lines, failed []string) []string {
	top := map[string]bool{}
	for _, f := range failed {
		top[f] = true
	}
	var all []string
	for _, l := range lines {
		if m := anyFailLine.FindStringSubmatch(l); m != nil && top[strings.SplitN(m[1], "/", 2)[0]] {
			all = append(all, m[1])
		}
	}
	var leaves []string
	for _, a := range all {
		if !slices.ContainsFunc(all, func(b string) bool { return strings.HasPrefix(b, a+"/") }) {
			leaves = append(leaves, a)
		}
	}
	return leaves
}

var (
	// testMessage matches a line a test printed: "x_test.go:12: ...", or
	// "helper.go:40: ..." from a helper that is not marked t.Helper.
	testMessage = regexp.MustCompile(`^[\w.-]+\.go:\d+: `)
	// anyFailLine is the result line of a failed test or subtest.
	anyFailLine = regexp.MustCompile(`^\s*--- FAIL: (\S+)`)
)

// testBlock is name's output, from its "=== RUN" to its "--- FAIL", or
// nothing when the two are not both there.
func testBlock(lines []string, name string) []string {
	start, end := -1, -1
	for i, l := range lines {
		if m := runLine.FindStringSubmatch(l); start < 0 && m != nil && m[1] == name {
			start = i // the first of its lines is its RUN
		}
		if strings.HasPrefix(l, "--- FAIL: "+name+" ") {
			end = i
		}
	}
	if start < 0 || end < start {
		return nil
	}
	return lines[start : end+1]
}

// failureOutput picks the lines that tell why a package failed: each failed
// test's output from its "=== RUN" to its "--- FAIL", else (a panic, a
// timeout, a VM that died) the output's tail.
func failureOutput(res pkgResult) []string {
	var out []string
	for _, name := range res.failed {
		block := testBlock(res.lines, name)
		if len(block) > 250 {
			block = append(append(append([]string{}, block[:50]...), fmt.Sprintf("... %d lines left out; the console log has them", len(block)-250)), block[len(block)-200:]...)
		}
		out = append(out, block...)
	}
	if len(out) > 0 {
		return out
	}
	tail := res.lines
	if len(tail) > 80 {
		tail = tail[len(tail)-80:]
	}
	return tail
}
