// Command xdp-counter shows the application side of bpfsup: a program that
// loads nothing, attaches nothing and needs no privileges for BPF, because
// bpfsup hands it the map it reads. bpfsup runs bpf/counter.bpf.o's
// count_packets on an interface (XDP, through a pinned bpf_link) and starts
// this program with the map's fd; xdp-counter takes it with
// handoff.Map("counters") and prints the packets counted per IP protocol,
// once a second. Kill it, and bpfsup starts it again with the same map: the
// counts went on rising meanwhile, because the program stays attached. Kill
// bpfsup, and the program still stays attached; the next bpfsup adopts it.
//
//	bpfsup run -o bpf/counter.bpf.o -a count_packets@xdp:veth0 -- ./xdp-counter
//
// Kernel: Linux 5.9 or later with BPF (XDP bpf_link), bpffs mounted or
// mountable at /sys/fs/bpf; bpfsup runs as root. `make demo` runs it end to
// end between two network namespaces (examples/xdp-counter/demo.sh).
package main

import (
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfsup/bpfsup/handoff"
)

// protocols names the IP protocols worth naming; counters[0] also counts
// every packet that is not IP (ARP, for one).
var protocols = map[uint32]string{0: "non-ip", 1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "xdp-counter: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	counters, err := handoff.Map("counters")
	if err != nil {
		return err
	}
	defer counters.Close()
	info, err := counters.Info()
	if err != nil {
		return fmt.Errorf("map counters: %w", err)
	}
	id, _ := info.ID()
	fmt.Printf("xdp-counter pid %d: counters map id %d, handed by bpfsup (pins under %s)\n", os.Getpid(), id, handoff.PinRoot())

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		line, err := counts(counters)
		if err != nil {
			return err
		}
		fmt.Println(line)
		select {
		case <-stop:
			return nil
		case <-tick.C:
		}
	}
}

// counts reads every protocol's count and formats the ones not zero:
// "icmp=12 udp=340 non-ip=4 total=356".
func counts(m *ebpf.Map) (string, error) {
	var (
		key   uint32
		value uint64
		total uint64
		parts []string
	)
	it := m.Iterate()
	for it.Next(&key, &value) {
		if value == 0 {
			continue
		}
		total += value
		name, ok := protocols[key]
		if !ok {
			name = fmt.Sprintf("proto%d", key)
		}
		parts = append(parts, fmt.Sprintf("%s=%d", name, value))
	}
	if err := it.Err(); err != nil {
		return "", fmt.Errorf("read counters: %w", err)
	}
	parts = append(parts, fmt.Sprintf("total=%d", total))
	return "counts: " + strings.Join(parts, " "), nil
}
