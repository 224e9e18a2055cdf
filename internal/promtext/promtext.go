// Package promtext keeps a few counters and gauges and writes them in the
// Prometheus text exposition format (version 0.0.4), with the process's
// and the Go runtime's usual metrics read when scraped.
//
// bpfsup wrote its metrics with the Prometheus client, then with
// VictoriaMetrics/metrics. Both do their work at package initialisation,
// on every start of bpfsup whether metrics are asked for or not: the
// client's protobuf descriptors and runtime/metrics took about 7 ms of a
// 20 ms start, VictoriaMetrics' reads of /proc and cgroup files at init
// about 2 ms. bpfsup serves a dozen series; this package has no init, and
// costs nothing until a scrape.
package promtext

import (
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Registry holds metric families, written in the order of their names, and
// each family's series in the order of their labels, as the Prometheus
// client writes them.
type Registry struct {
	mu         sync.Mutex
	families   []*family
	collectors []func(*Registry)
}

// Collect adds fn to what a scrape runs: fn sets series of its own in a
// registry made for the scrape, written with r's. Its series are those of
// the moment, gone at the next scrape when fn no longer sets them (a
// program replaced by a reload). A family is either r's or the
// collectors'.
func (r *Registry) Collect(fn func(*Registry)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.collectors = append(r.collectors, fn)
}

type family struct {
	name, help, typ string
	series          []*Value
}

// Value is one series: a float64 that is set or added to atomically.
type Value struct {
	labels string // `{k="v",...}` or ""
	bits   atomic.Uint64
}

// Set sets the value.
func (v *Value) Set(f float64) { v.bits.Store(math.Float64bits(f)) }

// Get returns the value.
func (v *Value) Get() float64 { return math.Float64frombits(v.bits.Load()) }

// Add adds d to the value.
func (v *Value) Add(d float64) {
	for {
		old := v.bits.Load()
		if v.bits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+d)) {
			return
		}
	}
}

// Inc adds 1.
func (v *Value) Inc() { v.Add(1) }

// Gauge returns the series of the gauge name with labels (name, value
// pairs), making the family (with help) and the series when they are new.
func (r *Registry) Gauge(name, help string, labels ...string) *Value {
	return r.series("gauge", name, help, labels)
}

// Counter is Gauge for a counter; its name ends in _total.
func (r *Registry) Counter(name, help string, labels ...string) *Value {
	return r.series("counter", name, help, labels)
}

func (r *Registry) series(typ, name, help string, labels []string) *Value {
	if len(labels)%2 != 0 {
		panic("promtext: labels must be name, value pairs: " + name)
	}
	ls := formatLabels(labels)
	r.mu.Lock()
	defer r.mu.Unlock()
	i := slices.IndexFunc(r.families, func(f *family) bool { return f.name == name })
	if i < 0 {
		f := &family{name: name, help: help, typ: typ}
		i, _ = slices.BinarySearchFunc(r.families, name, func(f *family, name string) int { return strings.Compare(f.name, name) })
		r.families = slices.Insert(r.families, i, f)
	}
	f := r.families[i]
	if f.typ != typ {
		panic("promtext: " + name + " is a " + f.typ + ", not a " + typ)
	}
	for _, v := range f.series {
		if v.labels == ls {
			return v
		}
	}
	v := &Value{labels: ls}
	j, _ := slices.BinarySearchFunc(f.series, ls, func(v *Value, ls string) int { return strings.Compare(v.labels, ls) })
	f.series = slices.Insert(f.series, j, v)
	return v
}

func formatLabels(labels []string) string {
	if len(labels) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteByte('{')
	for i := 0; i < len(labels); i += 2 {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(labels[i])
		b.WriteString(`="`)
		b.WriteString(escape(labels[i+1], true))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

// escape escapes a label value (quotes too) or a help text as the format
// says: backslash, newline and, in label values, the double quote.
func escape(s string, quote bool) string {
	if !strings.ContainsAny(s, "\\\n\"") {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '"' && quote:
			b.WriteString(`\"`)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// Write writes every family, then the process's and the runtime's metrics.
func (r *Registry) Write(w io.Writer) error {
	r.mu.Lock()
	collectors := slices.Clone(r.collectors)
	r.mu.Unlock()
	var scraped Registry
	for _, fn := range collectors {
		fn(&scraped)
	}
	r.mu.Lock()
	families := append(slices.Clone(r.families), scraped.families...)
	slices.SortStableFunc(families, func(a, b *family) int { return strings.Compare(a.name, b.name) })
	var b strings.Builder
	for _, f := range families {
		writeFamily(&b, f.name, f.help, f.typ)
		for _, v := range f.series {
			writeSample(&b, f.name, v.labels, v.Get())
		}
	}
	r.mu.Unlock()
	writeProcess(&b)
	_, err := io.WriteString(w, b.String())
	return err
}

func writeFamily(b *strings.Builder, name, help, typ string) {
	fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s %s\n", name, escape(help, false), name, typ)
}

func writeSample(b *strings.Builder, name, labels string, v float64) {
	b.WriteString(name)
	b.WriteString(labels)
	b.WriteByte(' ')
	switch {
	case math.IsInf(v, 1):
		b.WriteString("+Inf")
	case math.IsInf(v, -1):
		b.WriteString("-Inf")
	case math.IsNaN(v):
		b.WriteString("NaN")
	default:
		b.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
	}
	b.WriteByte('\n')
}

// writeProcess writes what the Prometheus client's process and Go
// collectors call the same: from /proc/self and the runtime, now.
func writeProcess(b *strings.Builder) {
	gauge := func(name, help string, v float64) {
		writeFamily(b, name, help, "gauge")
		writeSample(b, name, "", v)
	}
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) == nil {
		cpu := float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
		writeFamily(b, "process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", "counter")
		writeSample(b, "process_cpu_seconds_total", "", cpu)
	}
	if rss, vsize, start, ok := procStat(); ok {
		gauge("process_resident_memory_bytes", "Resident memory size in bytes.", rss)
		gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", vsize)
		gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", start)
	}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		gauge("process_open_fds", "Number of open file descriptors.", float64(len(fds)))
	}
	var lim unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &lim) == nil {
		gauge("process_max_fds", "Maximum number of open file descriptors.", float64(lim.Cur))
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	gauge("go_goroutines", "Number of goroutines that currently exist.", float64(runtime.NumGoroutine()))
	gauge("go_memstats_heap_alloc_bytes", "Number of heap bytes allocated and still in use.", float64(ms.HeapAlloc))
	gauge("go_memstats_sys_bytes", "Number of bytes obtained from system.", float64(ms.Sys))
	writeFamily(b, "go_gc_cycles_total", "Number of completed GC cycles.", "counter")
	writeSample(b, "go_gc_cycles_total", "", float64(ms.NumGC))
}

// procStat reads the resident and virtual sizes and the start time from
// /proc/self/stat (proc(5)).
func procStat() (rss, vsize, start float64, ok bool) {
	data, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0, 0, 0, false
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return 0, 0, 0, false
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state): field n is f[n-3].
	if len(f) < 22 {
		return 0, 0, 0, false
	}
	startTicks, err1 := strconv.ParseFloat(f[22-3], 64)
	vs, err2 := strconv.ParseFloat(f[23-3], 64)
	pages, err3 := strconv.ParseFloat(f[24-3], 64)
	if err1 != nil || err2 != nil || err3 != nil {
		return 0, 0, 0, false
	}
	boot, ok := bootTime()
	if !ok {
		return 0, 0, 0, false
	}
	const ticks = 100 // USER_HZ, 100 on every Linux architecture Go runs on
	return pages * float64(os.Getpagesize()), vs, boot + startTicks/ticks, true
}

// bootTime reads the boot time from /proc/stat's btime line.
func bootTime() (float64, bool) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			t, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return t, err == nil
		}
	}
	return 0, false
}
