package supervision

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// --metrics-addr serves Prometheus metrics whose values follow what
// happened: programs adopted from pins (a second run), restarts of a child
// that crashed twice, a reload.
func TestMetrics(t *testing.T) {
	e := testutil.MustEnv(t)
	a, b := testutil.MustNetns(t, "sup-a"), testutil.MustNetns(t, "sup-b")
	ifA, _ := testutil.MustVethPair(t, a, b)
	attach := []string{"-o", counterObj, "-a", "count_packets@xdp:" + ifA.Name, "--netns", a.Path}

	// A first run loads and pins; the second adopts.
	if out, code := e.Run(t, "run", append(attach, "--restart", "never", "--", "true")...); code != 0 {
		t.Fatalf("first run: exit %d:\n%s", code, out)
	}
	starts := filepath.Join(shortDir(t), "starts")
	url := fmt.Sprintf("http://127.0.0.1:%d/metrics", freePort(t))
	addr := strings.TrimSuffix(strings.TrimPrefix(url, "http://"), "/metrics")
	p := startRun(t, e, childEnv("crash-twice", envFile+"="+starts),
		append(attach, "--metrics-addr", addr, "--restart-delay", "10ms", "--", self(t))...)
	p.WaitOutput(t, "up after 2 crashes", 20*time.Second)

	var m map[string]float64
	testutil.WaitFor(t, 10*time.Second, "metrics at "+url, func() bool {
		var err error
		m, err = e2e.Scrape(url)
		return err == nil
	})
	want := map[string]float64{
		"bpfsup_child_up":                1,
		"bpfsup_child_restarts_total":    2,
		"bpfsup_start_limit_hits_total":  0,
		"bpfsup_objects":                 1,
		"bpfsup_maps":                    1,
		`bpfsup_programs{how="adopted"}`: 2,
		`bpfsup_programs{how="loaded"}`:  0,
		"bpfsup_links":                   1,
		"bpfsup_last_reload_success":     -1, // no reload yet
	}
	check := func(want map[string]float64) {
		t.Helper()
		for k, w := range want {
			if g, ok := m[k]; !ok || g != w {
				t.Errorf("%s = %v (present: %v), want %v", k, g, ok, w)
			}
		}
	}
	check(want)

	// A reload that succeeds; the child is restarted with the new fds.
	if out, code := e.Run(t, "reload"); code != 0 {
		t.Fatalf("bpfsup reload: exit %d:\n%s", code, out)
	}
	testutil.WaitFor(t, 10*time.Second, "the reload in the metrics", func() bool {
		var err error
		m, err = e2e.Scrape(url)
		return err == nil && m["bpfsup_last_reload_success"] == 1 && m["bpfsup_child_up"] == 1
	})
	check(map[string]float64{
		`bpfsup_reloads_total{result="success"}`: 1,
		"bpfsup_links":                           1,
		"bpfsup_objects":                         1,
	})
	if m["bpfsup_last_reload_timestamp_seconds"] < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("bpfsup_last_reload_timestamp_seconds = %v, want about now", m["bpfsup_last_reload_timestamp_seconds"])
	}
	p.Kill(syscall.SIGTERM)
	p.Wait(t, 10*time.Second)
}

// --log-format json: every line bpfsup writes is a JSON object with time,
// level and msg, the final error (start limit) included.
func TestLogFormatJSON(t *testing.T) {
	e := testutil.MustEnv(t)
	out, code := e.Run(t, "run", "-o", counterObj, "--log-format", "json", "--restart-delay", "1ms",
		"--start-limit", "1", "--", "sh", "-c", "exit 3")
	if code != 1 {
		t.Errorf("exit %d, want 1 (start limit)", code)
	}
	var msgs []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var rec struct {
			Time  string `json:"time"`
			Level string `json:"level"`
			Msg   string `json:"msg"`
			Err   string `json:"err"`
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Errorf("not a JSON line: %q (%v)", line, err)
			continue
		}
		if rec.Time == "" || rec.Level == "" || rec.Msg == "" {
			t.Errorf("JSON line without time, level or msg: %q", line)
		}
		msgs = append(msgs, rec.Msg+" "+rec.Err)
	}
	all := strings.Join(msgs, "\n")
	e2e.WantAll(t, all, "object ready", "child started", "child exited", "start limit hit")
}
