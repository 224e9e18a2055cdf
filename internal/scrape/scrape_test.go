package scrape

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/bpfsup/bpfsup/internal/promtext"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// startScrapes serves a registry on a loopback port for the test.
func startScrapes(t *testing.T) (*Server, string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var reg promtext.Registry
	reg.Gauge("bpfsup_objects", "BPF objects installed.").Set(3)
	ms := New(&reg, l.(*net.TCPListener))
	done := make(chan error, 1)
	go func() { done <- ms.Serve() }()
	t.Cleanup(func() {
		ms.Close()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return ms, ms.Addr()
}

// TestScrapeWithPrometheusClient: what a scraper gets from GET /metrics is
// the text format, parsed by Prometheus's own parser, over kept-alive
// connections of Go's HTTP client.
func TestScrapeWithPrometheusClient(t *testing.T) {
	_, addr := startScrapes(t)
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	for i := 0; i < 3; i++ {
		resp, err := client.Get("http://" + addr + "/metrics?x=1")
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
			t.Fatalf("GET /metrics: %s, Content-Type %q", resp.Status, resp.Header.Get("Content-Type"))
		}
		parser := expfmt.NewTextParser(model.LegacyValidation)
		fams, err := parser.TextToMetricFamilies(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if f := fams["bpfsup_objects"]; f == nil || f.Metric[0].GetGauge().GetValue() != 3 {
			t.Fatalf("bpfsup_objects: %v", f)
		}
	}
	for _, tc := range []struct{ method, path, status string }{
		{"HEAD", "/metrics", "200 OK"},
		{"GET", "/", "404 Not Found"},
		{"POST", "/metrics", "405 Method Not Allowed"},
	} {
		req, _ := http.NewRequest(tc.method, "http://"+addr+tc.path, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.Status != tc.status {
			t.Errorf("%s %s: %s, want %s", tc.method, tc.path, resp.Status, tc.status)
		}
	}
}

// exchange writes raw to a new connection and returns all it reads until
// the server closes it.
func exchange(t *testing.T, addr, raw string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(testutil.Scaled(10 * time.Second)))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	out, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read after %.60q: %v (got %q)", raw, err, out)
	}
	return string(out)
}

// TestScrapeRawRequests: two requests in one write are both answered in
// order; HTTP/1.0 and "Connection: close" close; what is not a scrape is
// refused with a status, and the connection closed.
func TestScrapeRawRequests(t *testing.T) {
	_, addr := startScrapes(t)
	out := exchange(t, addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	if n := strings.Count(out, "HTTP/1.1 200 OK"); n != 2 || strings.Count(out, "bpfsup_objects 3") != 2 {
		t.Errorf("two pipelined scrapes: %d answers:\n%s", n, out)
	}
	if out := exchange(t, addr, "GET /metrics HTTP/1.0\r\n\r\n"); !strings.HasPrefix(out, "HTTP/1.1 200 OK") || !strings.Contains(out, "Connection: close") {
		t.Errorf("HTTP/1.0 scrape: %q", out)
	}
	long := "GET /metrics HTTP/1.1\r\nX: " + strings.Repeat("a", scrapeMaxHeader) + "\r\n\r\n"
	for _, raw := range []string{"nonsense\r\n\r\n", "GET /metrics HTTP/2.0\r\n\r\n", long,
		"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"} {
		out := exchange(t, addr, raw)
		if !strings.HasPrefix(out, "HTTP/1.1 400") && !strings.HasPrefix(out, "HTTP/1.1 405") {
			t.Errorf("%.40q: %q, want a refusal", raw, out)
		}
	}
}

// TestScrapeQuiesce: quiesced for a re-exec, the server closes its idle
// kept-alive connections, leaves new ones in the backlog unanswered, and
// answers them once resumed.
func TestScrapeQuiesce(t *testing.T) {
	ms, addr := startScrapes(t)
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	br := bufio.NewReader(idle)
	if _, err := io.WriteString(idle, "GET /metrics HTTP/1.1\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	ms.Quiesce()
	_ = idle.SetReadDeadline(time.Now().Add(testutil.Scaled(10 * time.Second)))
	if n, err := br.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("idle connection after quiesce: read %d, %v; want it closed", n, err)
	}
	waiting, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer waiting.Close()
	if _, err := io.WriteString(waiting, "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	// Quiesced, nothing answers: a read deadline that passes is the proof.
	_ = waiting.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if n, err := waiting.Read(make([]byte, 1)); n != 0 || !isTimeout(err) {
		t.Fatalf("answered while quiesced: %d bytes, %v", n, err)
	}
	ms.Resume()
	_ = waiting.SetReadDeadline(time.Now().Add(testutil.Scaled(10 * time.Second)))
	out, err := io.ReadAll(waiting)
	if err != nil || !strings.HasPrefix(string(out), "HTTP/1.1 200 OK") {
		t.Fatalf("after resume: %q, %v", out, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
