// Command cgroup-connect4 shows a cgroup policy under bpfsup: bpfsup attaches
// bpf/connect4_block.bpf.o's block_connect4 to a cgroup (a cgroup connect4
// bpf_link, pinned) and starts this program with the object's maps. It
// writes the ports to block into blocked_ports, and prints what was blocked
// as blocked_count changes: every IPv4 connect() of a process in the cgroup
// to one of those ports fails with EPERM ("Operation not permitted"), TCP or
// UDP, whatever the process. It needs no privileges for BPF: bpfsup hands it
// the maps.
//
//	bpfsup run -o bpf/connect4_block.bpf.o -a block_connect4@/sys/fs/cgroup/app \
//	    -- ./cgroup-connect4 -block 9999,6379
//
// The -a value is only the target: the section, SEC("cgroup/connect4"),
// names the hook. Kernel: Linux 5.7 or later (cgroup bpf_link) with cgroup
// v2; bpfsup runs as root. examples/cgroup-connect4/run.sh runs it end to
// end.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"

	"github.com/bpfsup/bpfsup/handoff"
)

func main() {
	block := flag.String("block", "9999", "destination ports to block, comma-separated")
	every := flag.Duration("every", 200*time.Millisecond, "how often to look for blocked connects")
	flag.Parse()
	if err := run(*block, *every); err != nil {
		fmt.Fprintf(os.Stderr, "cgroup-connect4: %v\n", err)
		os.Exit(1)
	}
}

func run(block string, every time.Duration) error {
	var ports []uint16
	for _, s := range strings.Split(block, ",") {
		p, err := strconv.ParseUint(strings.TrimSpace(s), 10, 16)
		if err != nil || p == 0 {
			return fmt.Errorf("-block: %q is not a port", s)
		}
		ports = append(ports, uint16(p))
	}
	blocked, err := handoff.Map("blocked_ports")
	if err != nil {
		return err
	}
	defer blocked.Close()
	counts, err := handoff.Map("blocked_count")
	if err != nil {
		return err
	}
	defer counts.Close()

	// The set of blocked ports is the child's to say: the map outlives it,
	// so what an earlier run blocked and this one does not is unblocked.
	want := map[uint16]bool{}
	for _, p := range ports {
		want[p] = true
		if err := blocked.Put(p, uint8(1)); err != nil {
			return fmt.Errorf("block port %d: %w", p, err)
		}
	}
	var key uint16
	var one uint8
	var stale []uint16
	it := blocked.Iterate()
	for it.Next(&key, &one) {
		if !want[key] {
			stale = append(stale, key)
		}
	}
	for _, p := range stale {
		if err := blocked.Delete(p); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("unblock port %d: %w", p, err)
		}
	}
	fmt.Printf("cgroup-connect4 pid %d: blocking connect() to port %s for the processes of the cgroup\n", os.Getpid(), block)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(every)
	defer tick.Stop()
	seen := map[uint16]uint64{}
	for {
		now, err := readCounts(counts)
		if err != nil {
			return err
		}
		for _, p := range sortedPorts(now) {
			if n := now[p]; n != seen[p] {
				fmt.Printf("blocked %d connect() to port %d (%d in all)\n", n-seen[p], p, n)
				seen[p] = n
			}
		}
		select {
		case <-stop:
			return nil
		case <-tick.C:
		}
	}
}

func readCounts(m *ebpf.Map) (map[uint16]uint64, error) {
	out := map[uint16]uint64{}
	var port uint16
	var n uint64
	it := m.Iterate()
	for it.Next(&port, &n) {
		out[port] = n
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read blocked_count: %w", err)
	}
	return out, nil
}

func sortedPorts(m map[uint16]uint64) []uint16 {
	ports := make([]uint16, 0, len(m))
	for p := range m {
		ports = append(ports, p)
	}
	sort.Slice(ports, func(i, j int) bool { return ports[i] < ports[j] })
	return ports
}
