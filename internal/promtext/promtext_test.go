package promtext

import (
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// What Write writes is what Prometheus' own parser reads back: the names,
// types, help, labels (escaped) and values, and the process's metrics.
func TestWriteParses(t *testing.T) {
	var r Registry
	up := r.Gauge("bpfsup_child_up", "1 while the child runs.")
	up.Set(1)
	ok := r.Counter("bpfsup_reloads_total", "Reloads,\nby result.", "result", "success")
	bad := r.Counter("bpfsup_reloads_total", "ignored: the family has its help", "result", "failure")
	ok.Add(2.5)
	bad.Inc()
	odd := r.Gauge("bpfsup_programs", "Programs.", "object", `fw "new"\x`, "how", "line\nbreak")
	odd.Set(-1e-9)
	if r.Counter("bpfsup_reloads_total", "", "result", "success") != ok {
		t.Error("the same name and labels made a second series")
	}

	var b strings.Builder
	if err := r.Write(&b); err != nil {
		t.Fatal(err)
	}
	parser := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(b.String()))
	if err != nil {
		t.Fatalf("Prometheus cannot parse it: %v\n%s", err, b.String())
	}
	if f := fams["bpfsup_reloads_total"]; f == nil || f.GetType().String() != "COUNTER" || f.GetHelp() != "Reloads,\nby result." || len(f.Metric) != 2 ||
		f.Metric[0].GetCounter().GetValue() != 1 || f.Metric[1].GetCounter().GetValue() != 2.5 { // failure, then success
		t.Errorf("bpfsup_reloads_total: %v", f)
	}
	p := fams["bpfsup_programs"]
	if p == nil || len(p.Metric) != 1 || p.Metric[0].GetGauge().GetValue() != -1e-9 {
		t.Fatalf("bpfsup_programs: %v", p)
	}
	labels := map[string]string{}
	for _, l := range p.Metric[0].Label {
		labels[l.GetName()] = l.GetValue()
	}
	if labels["object"] != `fw "new"\x` || labels["how"] != "line\nbreak" {
		t.Errorf("labels came back as %q", labels)
	}
	for _, name := range []string{"bpfsup_child_up", "process_cpu_seconds_total", "process_resident_memory_bytes",
		"process_start_time_seconds", "process_open_fds", "go_goroutines", "go_memstats_heap_alloc_bytes"} {
		if fams[name] == nil || len(fams[name].Metric) == 0 {
			t.Errorf("no %s", name)
		}
	}
	if rss := fams["process_resident_memory_bytes"].Metric[0].GetGauge().GetValue(); rss < 1<<20 || rss > 1<<32 {
		t.Errorf("process_resident_memory_bytes = %v", rss)
	}
}

func TestMixedTypesPanic(t *testing.T) {
	var r Registry
	r.Gauge("x", "")
	defer func() {
		if recover() == nil {
			t.Error("a counter named as a gauge did not panic")
		}
	}()
	r.Counter("x", "")
}

// A collector's series are those it sets at each scrape, written in order
// with the registry's own, and gone when it no longer sets them.
func TestCollect(t *testing.T) {
	var r Registry
	r.Gauge("bpfsup_objects", "Objects.").Set(1)
	programs := []string{"a", "b"}
	r.Collect(func(s *Registry) {
		for i, p := range programs {
			s.Counter("bpfsup_program_runs_total", "Runs.", "program", p).Set(float64(10 * (i + 1)))
		}
	})
	scrape := func() map[string]*dto.MetricFamily {
		t.Helper()
		var b strings.Builder
		if err := r.Write(&b); err != nil {
			t.Fatal(err)
		}
		parser := expfmt.NewTextParser(model.LegacyValidation)
		fams, err := parser.TextToMetricFamilies(strings.NewReader(b.String()))
		if err != nil {
			t.Fatalf("Prometheus cannot parse it: %v\n%s", err, b.String())
		}
		return fams
	}
	fams := scrape()
	if f := fams["bpfsup_program_runs_total"]; f == nil || len(f.Metric) != 2 || f.Metric[1].GetCounter().GetValue() != 20 {
		t.Fatalf("bpfsup_program_runs_total: %v", f)
	}
	if fams["bpfsup_objects"] == nil {
		t.Fatal("the registry's own series are gone")
	}
	programs = programs[:1]
	if f := scrape()["bpfsup_program_runs_total"]; f == nil || len(f.Metric) != 1 {
		t.Fatalf("after b went: %v", f)
	}
}
