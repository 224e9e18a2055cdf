package supervisor

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/promtext"
)

// Run statistics (Options.ProgramStats). The kernel counts a program's runs
// and run time only while run-time statistics are enabled: by the sysctl
// kernel.bpf_stats_enabled, which stays on when whoever set it dies, or by
// a BPF_ENABLE_STATS fd, which counts for as long as it is open. bpfsup
// holds such an fd for its whole life and never writes the sysctl: when
// bpfsup dies, however it dies, the kernel closes the fd and stops counting
// (unless someone else asked too). A re-exec (SIGUSR2) closes it at the exec
// and the new program opens its own.

// enableStats opens the BPF_ENABLE_STATS fd, when the options ask for it.
func (s *supervisor) enableStats() error {
	if !s.opts.ProgramStats {
		return nil
	}
	c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		return fmt.Errorf("program_stats: enable the kernel's run-time statistics (BPF_ENABLE_STATS): %w", err)
	}
	s.stats = c
	s.log.Info("program run statistics enabled while bpfsup runs")
	return nil
}

func (s *supervisor) closeStats() {
	if s.stats != nil {
		s.stats.Close()
		s.stats = nil
	}
}

// statsTargets are the programs and maps a scrape reads, by kernel id: the
// scrape runs on the metrics server's goroutine and opens each by its id
// rather than touch the fds the loop owns and closes on a reload.
type statsTargets struct {
	programs []programTarget
	maps     []mapTarget
}

type programTarget struct {
	object, program, hook string
	id                    ebpf.ProgramID
}

type mapTarget struct {
	object, name string
	id           ebpf.MapID
}

// statsTargetsOf lists what the metrics read of the installed objects.
func (s *supervisor) statsTargetsOf() *statsTargets {
	t := &statsTargets{}
	for _, in := range s.objects {
		ids := in.IDs()
		hooks := in.ProgramHooks()
		for name, id := range ids.Programs {
			t.programs = append(t.programs, programTarget{object: in.Name(), program: name,
				hook: strings.Join(hooks[name], ","), id: ebpf.ProgramID(id)})
		}
		for name, id := range ids.Maps {
			t.maps = append(t.maps, mapTarget{object: in.Name(), name: name, id: ebpf.MapID(id)})
		}
	}
	sort.Slice(t.programs, func(i, j int) bool {
		a, b := t.programs[i], t.programs[j]
		return a.object < b.object || (a.object == b.object && a.program < b.program)
	})
	sort.Slice(t.maps, func(i, j int) bool {
		a, b := t.maps[i], t.maps[j]
		return a.object < b.object || (a.object == b.object && a.name < b.name)
	})
	return t
}

// countedEntries bounds the maps whose entries a scrape counts: a walk of
// the keys is one syscall per entry.
const countedEntries = 65536

// collectStats adds, at a scrape, each program's run statistics (when
// withPrograms: they are 0 unless statistics are on) and each map's memory
// and, for hash-like maps of at most countedEntries, entries.
func collectStats(targets *atomic.Pointer[statsTargets], withPrograms bool) func(*promtext.Registry) {
	return func(r *promtext.Registry) {
		t := targets.Load()
		if t == nil {
			return
		}
		if withPrograms {
			for _, pt := range t.programs {
				collectProgram(r, pt)
			}
		}
		for _, mt := range t.maps {
			collectMap(r, mt)
		}
	}
}

func collectProgram(r *promtext.Registry, pt programTarget) {
	p, err := ebpf.NewProgramFromID(pt.id)
	if err != nil {
		return // replaced since the targets were taken
	}
	defer p.Close()
	st, err := p.Stats()
	if err != nil {
		return
	}
	labels := []string{"object", pt.object, "program", pt.program, "hook", pt.hook}
	r.Counter("bpfsup_program_runs_total", "Times the program ran, counted while program statistics are on.", labels...).Set(float64(st.RunCount))
	r.Counter("bpfsup_program_run_seconds_total", "Time the program ran, counted while program statistics are on.", labels...).Set(st.Runtime.Seconds())
	r.Counter("bpfsup_program_recursion_misses_total", "Times the program did not run because another BPF program ran on the CPU.", labels...).Set(float64(st.RecursionMisses))
}

func collectMap(r *promtext.Registry, mt mapTarget) {
	m, err := ebpf.NewMapFromID(mt.id)
	if err != nil {
		return
	}
	defer m.Close()
	labels := []string{"object", mt.object, "map", mt.name}
	if info, err := m.Info(); err == nil {
		if mem, ok := info.Memlock(); ok {
			r.Gauge("bpfsup_map_memory_bytes", "Memory the kernel charges for the map.", labels...).Set(float64(mem))
		}
	}
	r.Gauge("bpfsup_map_max_entries", "The map's capacity.", labels...).Set(float64(m.MaxEntries()))
	if hashLike(m.Type()) && m.MaxEntries() <= countedEntries {
		if n, err := countKeys(m); err == nil {
			r.Gauge("bpfsup_map_entries", "Entries in the map, for hash-like maps of at most 65536 entries.", labels...).Set(float64(n))
		}
	}
}

func hashLike(t ebpf.MapType) bool {
	return slices.Contains([]ebpf.MapType{ebpf.Hash, ebpf.PerCPUHash, ebpf.LRUHash, ebpf.LRUCPUHash, ebpf.LPMTrie}, t)
}

// countKeys counts the map's keys by walking them. A walk that a deletion
// sends back to the first key is given up after twice the map's capacity.
func countKeys(m *ebpf.Map) (int, error) {
	key := make([]byte, m.KeySize())
	next := make([]byte, m.KeySize())
	var cur any // nil: the first key
	for n := 0; n <= 2*int(m.MaxEntries()); n++ {
		if err := m.NextKey(cur, &next); err != nil {
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				return n, nil
			}
			return 0, err
		}
		copy(key, next)
		cur = key
	}
	return 0, errors.New("the map changed too much while its keys were counted")
}
