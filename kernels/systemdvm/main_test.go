//go:build systemdvm

// Package systemdvm holds the cases of `make systemd` (kernels/systemd.sh):
// bpfsup installed from its .deb and run by systemd as PID 1, with the units
// of examples/systemd, in a VM (kernels/cmd/vmtest -systemd). The build tag
// keeps them out of `go test ./...` on a host, where systemd must never be
// driven: they call systemctl and reboot nothing, but they expect to own
// the machine.
//
// The test binary is also the application the units run (`app`, see
// app.go): it writes the UDP port the filter drops into the map it is
// handed, says READY=1 when told to, and records the signals it gets.
package systemdvm

import (
	"errors"
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/kernels/vmplan"
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "app" {
		os.Exit(app(os.Args[2:]))
	}
	if err := loadModules(); err != nil {
		fmt.Fprintf(os.Stderr, "systemdvm: %v\n", err)
		os.Exit(2)
	}
	os.Exit(m.Run())
}

// loadModules loads the kernel modules of the plan (veth), dependencies
// first, as kernels/init does: the root file system has no kmod and no
// /lib/modules.
func loadModules() error {
	plan, err := vmplan.Read(vmplan.Path)
	if err != nil {
		return err
	}
	for _, path := range plan.Modules {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("load module %s: %w", path, err)
		}
	}
	return nil
}
