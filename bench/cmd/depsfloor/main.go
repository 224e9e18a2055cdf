// Command depsfloor does nothing but link the libraries bpfsup imports:
// `make bench` times it from fork to exit beside gohello and bpfsup version.
// Every package linked into a Go program runs its initialisation before
// main, whether the program calls it or not, so this is the start-up floor
// of any program built on these libraries on the machine, and bpfsup
// version's distance from it is what bpfsup's own code (and its choice of
// standard packages) costs. With DEPSFLOOR_IDLE set in its environment it
// sleeps until killed instead, and `make bench` reads its resident memory
// beside bpfsup's idle footprint. The test keeps the list equal to what
// cmd/bpfsup imports from outside the module and the standard library.
package main

import (
	_ "github.com/cilium/ebpf"
	_ "github.com/cilium/ebpf/asm"
	_ "github.com/cilium/ebpf/btf"
	_ "github.com/cilium/ebpf/features"
	_ "github.com/cilium/ebpf/link"
	_ "github.com/coreos/go-systemd/v22/daemon"
	_ "github.com/fsnotify/fsnotify"
	_ "github.com/oklog/run"
	_ "github.com/pelletier/go-toml/v2"
	_ "github.com/spf13/cobra"
	_ "github.com/spf13/pflag"
	_ "github.com/vishvananda/netns"
	_ "golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

func main() {
	// Asleep, it is the floor of resident memory: what the libraries'
	// initialisation leaves behind, with nothing done.
	if _, idle := unix.Getenv("DEPSFLOOR_IDLE"); idle {
		for {
			_ = unix.Pause()
		}
	}
}
