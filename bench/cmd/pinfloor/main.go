// Command pinfloor is the floor under bpfsup's adopt and status of many
// objects: what any Go program that adopts or reads what is pinned under a
// pin root does on this machine, and nothing more. `make bench` times it
// beside bpfsup (the scale section).
//
// It lists the pin root's objects and their pins, then on GOMAXPROCS
// goroutines opens every pin (BPF_OBJ_GET), learns what it holds (as
// bpfsup does, from /proc/self/fd through a directory opened once) and asks
// the kernel for its info. No lock, no manifest, no hook is checked. Then:
//
//	pinfloor adopt [-no-maps] ROOT CMD [ARG...]
//	    starts CMD with every map's fd (LISTEN_FDS; none with -no-maps),
//	    through bpfsup's exec helper, and waits for it: the file that
//	    PINFLOOR_HELPER names (the native helper), else /bin/sh;
//	pinfloor status ROOT
//	    also reads each map's memory from its fdinfo, as bpfsup status
//	    does, and prints one line per pin.
package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/bpffs"
)

// pin is one pin and what was read from it.
type pin struct {
	path, kind string
	fd         int
	id         uint32
	memlock    uint64
}

func main() {
	args := os.Args[1:]
	mode, hand := "", true
	if len(args) > 0 {
		mode, args = args[0], args[1:]
	}
	state := ""
	for mode == "adopt" && len(args) > 0 {
		if args[0] == "-no-maps" {
			hand, args = false, args[1:]
		} else if args[0] == "-state" && len(args) > 1 {
			state, args = args[1], args[2:]
		} else {
			break
		}
	}
	if (mode != "adopt" || len(args) < 2) && (mode != "status" || len(args) != 1) {
		fmt.Fprintln(os.Stderr, "usage: pinfloor adopt [-no-maps] [-state DIR] ROOT CMD [ARG...] | pinfloor status ROOT")
		os.Exit(2)
	}
	root := args[0]
	pins, objects, err := list(root)
	if err != nil {
		fmt.Fprintln(os.Stderr, "pinfloor:", err)
		os.Exit(1)
	}
	if state != "" {
		// The locks stay taken until the process exits, as a
		// supervisor's do.
		if err := lockAll(state, objects); err != nil {
			fmt.Fprintln(os.Stderr, "pinfloor:", err)
			os.Exit(1)
		}
	}
	open(pins, mode == "status")
	if mode == "status" {
		var b strings.Builder
		for _, p := range pins {
			fmt.Fprintf(&b, "%s %s id %d memlock %d\n", p.path, p.kind, p.id, p.memlock)
		}
		os.Stdout.WriteString(b.String())
		return
	}
	var files []*os.File
	for _, p := range pins {
		if p.kind == bpffs.Map && hand {
			files = append(files, os.NewFile(uintptr(p.fd), p.path))
		}
	}
	c := exec.Command("/bin/sh", append([]string{"-c", `LISTEN_PID=$$ exec "$@"`, "sh"}, args[1:]...)...)
	if helper := os.Getenv("PINFLOOR_HELPER"); helper != "" {
		c = exec.Command(helper, args[1:]...)
	}
	c.Env = append(os.Environ(), "LISTEN_FDS="+strconv.Itoa(len(files)))
	c.ExtraFiles = files
	c.Stdout, c.Stderr = os.Stdout, os.Stderr
	if err := c.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "pinfloor:", err)
		os.Exit(1)
	}
}

// list lists the objects under root and the pins of each:
// root/OBJECT/KIND/NAME.
func list(root string) ([]*pin, []string, error) {
	objects, err := os.ReadDir(root)
	if err != nil {
		return nil, nil, err
	}
	var pins []*pin
	var objNames []string
	for _, o := range objects {
		objNames = append(objNames, o.Name())
		for _, kind := range []string{"maps", "programs", "links"} {
			dir := filepath.Join(root, o.Name(), kind)
			names, err := os.ReadDir(dir)
			if err != nil {
				continue
			}
			for _, n := range names {
				pins = append(pins, &pin{path: filepath.Join(dir, n.Name()), fd: -1})
			}
		}
	}
	return pins, objNames, nil
}

// lockAll takes each object's lock and reads its manifest, on GOMAXPROCS
// goroutines: the lock file opened (created when missing) and write-locked
// without waiting, the manifest read whole. The lock files stay open.
func lockAll(state string, objects []string) error {
	next := make(chan string)
	errs := make(chan error, len(objects))
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for name := range next {
				errs <- lockOne(state, name)
			}
		})
	}
	for _, name := range objects {
		next <- name
	}
	close(next)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func lockOne(state, name string) error {
	lock := filepath.Join(state, name+".lock")
	fd, err := unix.Open(lock, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("open %s: %w", lock, err)
	}
	lk := unix.Flock_t{Type: unix.F_WRLCK}
	if err := unix.FcntlFlock(uintptr(fd), unix.F_SETLK, &lk); err != nil {
		unix.Close(fd)
		return fmt.Errorf("lock %s (a supervisor running on these pins?): %w", lock, err)
	}
	path := filepath.Join(state, name+".json")
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if len(data) == 0 {
		return fmt.Errorf("%s is empty", path)
	}
	return nil
}

// open opens every pin and reads its info, on GOMAXPROCS goroutines.
func open(pins []*pin, memlock bool) {
	next := make(chan *pin)
	var wg sync.WaitGroup
	for range runtime.GOMAXPROCS(0) {
		wg.Go(func() {
			for p := range next {
				openPin(p, memlock)
			}
		})
	}
	for _, p := range pins {
		next <- p
	}
	close(next)
	wg.Wait()
}

func openPin(p *pin, memlock bool) {
	fd, kind, err := bpffs.OpenPin(p.path)
	if err != nil {
		return
	}
	p.kind = kind
	switch kind {
	case bpffs.Map:
		f, _ := bpffs.MapInfo(fd)
		p.id = f.ID
		if memlock {
			p.memlock, _ = bpffs.MapMemlock(fd)
		}
	case bpffs.Program:
		f, _ := bpffs.ProgInfo(fd, false)
		p.id = f.ID
	}
	if memlock || kind != bpffs.Map {
		unix.Close(fd)
		return
	}
	p.fd = fd
}
