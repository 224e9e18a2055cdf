package main

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// debugExitPort is the port of qemu's isa-debug-exit device
// (-device isa-debug-exit,iobase=0xf4,iosize=0x04).
const debugExitPort = 0xf4

func outl(port uint16, val uint32)

// powerOff ends the VM with qemu exiting (code<<1)|1. ioperm grants port
// access to the calling thread only, so the goroutine stays on one thread
// from ioperm to the write. Should the device be missing, a plain power-off
// still ends the VM (qemu then exits 0, and the host reads the markers).
func powerOff(code int) {
	drainConsole()
	runtime.LockOSThread()
	if err := unix.Ioperm(debugExitPort, 4, 1); err != nil {
		fmt.Fprintf(os.Stderr, "vminit: ioperm: %v\n", err)
	} else {
		outl(debugExitPort, uint32(code))
	}
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

// drainConsole waits until the serial console has sent everything written
// to it: qemu stops the moment the exit port is written, and lines still in
// the UART's buffer would be lost.
func drainConsole() {
	for _, f := range []*os.File{os.Stdout, os.Stderr} {
		_ = f.Sync()
		// TCSBRK with a non-zero argument is tcdrain(3).
		_ = unix.IoctlSetInt(int(f.Fd()), unix.TCSBRK, 1)
	}
}
