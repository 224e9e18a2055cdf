// Command exec-tracer shows a tracepoint program and a ring buffer under
// bpfsup: bpfsup loads bpf/exectrace.bpf.o, attaches trace_exec to the
// sched/sched_process_exec tracepoint without being told to (its section,
// SEC("tp/sched/sched_process_exec"), names the whole hook, so no -a is
// needed) and starts this program with the object's ring buffer map, events.
// exec-tracer reads the events from it with cilium/ebpf's ringbuf reader and
// prints one line per exec on the machine: the pid, the command name and the
// file executed. It needs no privileges for BPF: bpfsup hands it the map.
//
//	bpfsup run -o bpf/exectrace.bpf.o -- ./exec-tracer
//
// Kill exec-tracer and bpfsup starts it again on the same ring buffer: the
// events of the execs in between wait there for it (up to the buffer's 256
// KiB). Kernel: Linux 5.15 or later (ring buffer, perf_event bpf_link) with
// tracefs; bpfsup runs as root. examples/exec-tracer/run.sh runs it end to
// end.
package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/bpfsup/bpfsup/handoff"
)

// execEvent is struct exec_event of bpf/exectrace.c.
type execEvent struct {
	Pid      uint32
	OldPid   uint32
	Comm     [16]byte
	Filename [128]byte
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "exec-tracer: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	events, err := handoff.Map("events")
	if err != nil {
		return err
	}
	defer events.Close()
	rd, err := ringbuf.NewReader(events)
	if err != nil {
		return fmt.Errorf("ring buffer: %w", err)
	}
	// Closing the reader ends a blocked Read: that is how a signal stops us.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		rd.Close()
	}()
	fmt.Printf("exec-tracer pid %d: reading exec events from the ring buffer bpfsup handed over\n", os.Getpid())
	for {
		rec, err := rd.Read()
		if errors.Is(err, ringbuf.ErrClosed) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read ring buffer: %w", err)
		}
		var e execEvent
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.LittleEndian, &e); err != nil {
			fmt.Fprintf(os.Stderr, "exec-tracer: short event (%d bytes): %v\n", len(rec.RawSample), err)
			continue
		}
		fmt.Printf("exec pid=%d comm=%s file=%s\n", e.Pid, cstring(e.Comm[:]), cstring(e.Filename[:]))
	}
}

// cstring is the text of a NUL-terminated C string.
func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}
