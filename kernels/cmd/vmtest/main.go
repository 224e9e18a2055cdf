// Command vmtest runs the repository's test packages inside VMs, one per
// kernel, under qemu's software emulation, and prints one line per kernel
// and package. kernels/run.sh (`make kernels`) fetches the kernels and calls
// it; it can be run by hand too:
//
//	go run ./kernels/cmd/vmtest -kernel 6.1=/var/cache/bpfsup-kernels/x/linux-image-6.1... \
//	    -busybox /path/to/busybox -run 'TestTCX' ./hooks
//
// Each VM boots the kernel with an initramfs that holds a static /init
// (kernels/init), the static test binaries, a static bpfsup, the repository's
// files at the same path as on the host (tests find bpf/*.bpf.o through it),
// the kernel modules the tests need, busybox, and iproute2 with its
// libraries. It exits non-zero when any test fails on any kernel, when a
// package leaves something behind, or when a VM does not finish.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"
)

type kernelFlag []string

func (k *kernelFlag) String() string     { return strings.Join(*k, ",") }
func (k *kernelFlag) Set(s string) error { *k = append(*k, s); return nil }

type options struct {
	kernels    []kernelSpec
	busybox    string
	packages   []string
	run        string
	short      bool
	pkgTimeout time.Duration
	vmTimeout  time.Duration
	parallel   int
	smp        int
	cpu        string
	cmdline    string
	mem        string
	work       string
	logs       string
	extraArgs  []string
}

func main() {
	var (
		o       options
		kernels kernelFlag
		systemd kernelFlag
		deb     string
		args    string
	)
	flag.Var(&systemd, "systemd", "LABEL=KERNELDIR=ROOTFS: boot ROOTFS (a cpio archive) with systemd as PID 1 and run kernels/systemdvm's cases (repeatable; kernels/systemd.sh)")
	flag.StringVar(&deb, "deb", "", "with -systemd: the bpfsup .deb the VMs install")
	flag.Var(&kernels, "kernel", "LABEL=DIR: a kernel to test on, DIR an unpacked linux-image .deb (repeatable)")
	flag.StringVar(&o.busybox, "busybox", "", "a static busybox, for the shell tools tests use (sh, sleep, ...)")
	flag.StringVar(&o.run, "run", "", "run only the tests matching this regexp (-test.run)")
	flag.BoolVar(&o.short, "short", true, "pass -test.short: the long loops run scaled down")
	flag.DurationVar(&o.pkgTimeout, "timeout", 15*time.Minute, "per test package (-test.timeout)")
	flag.DurationVar(&o.vmTimeout, "vm-timeout", 50*time.Minute, "per VM, from boot to power-off")
	flag.IntVar(&o.parallel, "parallel", 2, "VMs run at once")
	flag.IntVar(&o.smp, "smp", 1, "virtual CPUs per VM (with more, 6.1 has crashed under emulation while patching a BPF trampoline in)")
	flag.StringVar(&o.mem, "mem", "2G", "memory per VM")
	flag.StringVar(&o.cpu, "cpu", "max", "qemu's CPU model")
	flag.StringVar(&o.cmdline, "append", "", "more kernel command line")
	flag.StringVar(&o.work, "work", "", "build directory (default: a temporary one, removed afterwards)")
	flag.StringVar(&o.logs, "logs", filepath.Join(os.TempDir(), "bpfsup-vmtest-logs"), "where the VMs' console logs go")
	flag.StringVar(&args, "args", "", "more arguments for every test binary, space separated")
	flag.Parse()
	if args != "" {
		o.extraArgs = strings.Fields(args)
	}
	o.packages = flag.Args()
	for _, k := range kernels {
		label, dir, ok := strings.Cut(k, "=")
		if !ok || label == "" || dir == "" {
			fatalf("-kernel %q: want LABEL=DIR", k)
		}
		o.kernels = append(o.kernels, kernelSpec{label: label, dir: dir})
	}
	if runtime.GOARCH != "amd64" {
		fatalf("vmtest runs amd64 kernels with the amd64 qemu; this is %s", runtime.GOARCH)
	}
	if len(systemd) > 0 {
		var specs []systemdSpec
		for _, s := range systemd {
			f := strings.SplitN(s, "=", 3)
			if len(f) != 3 || f[0] == "" || f[1] == "" || f[2] == "" {
				fatalf("-systemd %q: want LABEL=KERNELDIR=ROOTFS", s)
			}
			specs = append(specs, systemdSpec{kernelSpec: kernelSpec{label: f[0], dir: f[1]}, rootfs: f[2]})
		}
		if deb == "" {
			fatalf("-systemd needs -deb")
		}
		os.Exit(runSystemd(o, specs, deb))
	}
	if len(o.kernels) == 0 {
		fatalf("no -kernel given")
	}
	os.Exit(run(o))
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "vmtest: "+format+"\n", args...)
	os.Exit(2)
}

func logf(format string, args ...any) {
	fmt.Printf("vmtest: "+format+"\n", args...)
}

func run(o options) int {
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
	} else if err := os.MkdirAll(work, 0o755); err != nil {
		return fail(err)
	}
	pkgs, err := testPackages(repo, o.packages)
	if err != nil {
		return fail(err)
	}
	if len(pkgs) == 0 {
		return fail(fmt.Errorf("no test packages"))
	}
	logf("building %d test binaries, bpfsup and /init (static)", len(pkgs))
	b, err := build(repo, work, pkgs)
	if err != nil {
		return fail(err)
	}
	logf("built in %s", time.Since(began).Round(time.Second))
	common, err := commonFiles(repo, b, o)
	if err != nil {
		return fail(err)
	}

	results := make([][]pkgResult, len(o.kernels))
	vmErrs := make([]error, len(o.kernels))
	sem := make(chan struct{}, max(o.parallel, 1))
	var wg sync.WaitGroup
	for i, ks := range o.kernels {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			results[i], vmErrs[i] = runKernel(ks, common, pkgs, b, work, o)
		}()
	}
	wg.Wait()

	failed := report(os.Stdout, o.kernels, pkgs, results, vmErrs)
	fmt.Printf("vmtest: %d kernels, wall time %s\n", len(o.kernels), time.Since(began).Round(time.Second))
	// The closing line in the form CI reads, counting top-level tests over
	// every kernel; a package that did not finish counts as one failure.
	// CI may show only the output's tail: the last line names what failed.
	var pass, fail, skip int
	var what []string
	for ki, ks := range o.kernels {
		if vmErrs[ki] != nil {
			fail++
			what = append(what, ks.label+" (vm)")
		}
		for _, res := range results[ki] {
			pass, fail, skip = pass+res.pass, fail+res.fail, skip+res.skip
			for _, name := range res.failed {
				what = append(what, ks.label+" "+res.name+" "+name)
			}
			if !res.ok() && res.fail == 0 {
				fail++
				what = append(what, ks.label+" "+res.name)
			}
		}
	}
	// What CI shows may be only the tail: the messages of each failed test
	// come just before the two closing lines, shortened, so that a failure
	// can be read there.
	for ki, ks := range o.kernels {
		for _, res := range results[ki] {
			for _, l := range failureMessages(res, 4, 300) {
				fmt.Printf("kernels: %s %s %s\n", ks.label, res.name, l)
			}
		}
	}
	fmt.Printf("kernels: %d passed, %d failed, %d skipped\n", pass, fail, skip)
	if len(what) > 0 {
		fmt.Printf("kernels: failed: %s\n", strings.Join(what, "; "))
	}
	if failed {
		return 1
	}
	return 0
}

func fail(err error) int {
	fmt.Fprintf(os.Stderr, "vmtest: %v\n", err)
	return 2
}

// repoRoot is the module's top directory: where go.mod is, above the
// working directory.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory")
		}
		dir = parent
	}
}
