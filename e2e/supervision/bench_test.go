package supervision

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/handoff"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// benchSocket is where bench children report "ready T" and "exit T".
type benchSocket struct {
	path string
	conn *net.UnixConn
	buf  []byte
}

func listenBench(b *testing.B) *benchSocket {
	b.Helper()
	path := filepath.Join(shortDir(b), "bench")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	return &benchSocket{path: path, conn: conn, buf: make([]byte, 256)}
}

// next reads the next report: its kind and time (CLOCK_MONOTONIC ns).
func (s *benchSocket) next(b *testing.B) (string, int64) {
	b.Helper()
	_ = s.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	n, err := s.conn.Read(s.buf)
	if err != nil {
		b.Fatalf("read a child's report: %v", err)
	}
	kind, v, _ := strings.Cut(string(s.buf[:n]), " ")
	ns, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		b.Fatalf("bad report %q", s.buf[:n])
	}
	return kind, ns
}

// reportLatencies adds the median and the 99th percentile as metrics.
func reportLatencies(b *testing.B, lat []time.Duration) {
	slices.Sort(lat)
	if len(lat) == 0 {
		return
	}
	p := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
	b.ReportMetric(float64(p(0.5).Microseconds()), "median-µs")
	b.ReportMetric(float64(p(0.99).Microseconds()), "p99-µs")
}

// BenchmarkChildRestart times bpfsup restarting a crashed child, with
// --restart-delay 0: from the child's last instant (it reports the time,
// then exits 1) to the new child running with its map (it reports the
// time once handoff.Map returned). The path: bpfsup reaps the child,
// decides, forks the exec helper (/bin/sh), which execs the child.
func BenchmarkChildRestart(b *testing.B) {
	e := testutil.MustEnv(b)
	sock := listenBench(b)
	p := startRun(b, e, childEnv("bench", envBenchSock+"="+sock.path),
		"-o", counterObj, "--restart-delay", "0", "--start-limit", "0", "--", self(b))

	lat := make([]time.Duration, 0, b.N)
	var exitAt int64
	b.ResetTimer()
	for len(lat) < b.N {
		kind, ns := sock.next(b)
		switch kind {
		case "ready":
			if exitAt != 0 {
				lat = append(lat, time.Duration(ns-exitAt))
			}
		case "exit":
			exitAt = ns
		default:
			b.Fatalf("child reports %q; output:\n%s", kind, p.Output())
		}
	}
	b.StopTimer()
	reportLatencies(b, lat)
	p.Kill(15)
	<-p.Done()
}

// BenchmarkForkExec is the floor for BenchmarkChildRestart: the benchmark
// itself forks and execs the same child with the same map fd, from just
// before the fork to the child running with its map.
func BenchmarkForkExec(b *testing.B) {
	testutil.RequireRoot(b)
	sock := listenBench(b)
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 256})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	// A duplicate of its own: os.File closes the fd it holds.
	fd, err := unix.FcntlInt(uintptr(m.FD()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	mapFile := os.NewFile(uintptr(fd), "counters")
	defer mapFile.Close()
	env := childEnv("bench", envBenchSock+"="+sock.path,
		handoff.EnvListenFDs+"=1", handoff.EnvListenFDNames+"=counter/maps/counters")

	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		cmd := exec.Command(self(b))
		cmd.Env = env
		cmd.ExtraFiles = []*os.File{mapFile}
		start := monotonic()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		kind, ns := sock.next(b)
		if kind != "ready" {
			b.Fatalf("child reports %q", kind)
		}
		lat = append(lat, time.Duration(ns-start))
		if kind, _ := sock.next(b); kind != "exit" {
			b.Fatalf("child reports %q", kind)
		}
		if err := cmd.Wait(); err == nil || cmd.ProcessState.ExitCode() != 1 {
			b.Fatalf("child: %v", fmt.Sprint(err))
		}
	}
	b.StopTimer()
	reportLatencies(b, lat)
}
