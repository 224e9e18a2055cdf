package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/bpfsup/bpfsup/config"
)

// metrics are bpfsup's Prometheus metrics, on a registry of their own.
type metrics struct {
	reg            *prometheus.Registry
	childUp        prometheus.Gauge
	restarts       prometheus.Counter
	startLimitHits prometheus.Counter
	objects        prometheus.Gauge
	maps           prometheus.Gauge
	programs       *prometheus.GaugeVec
	links          prometheus.Gauge
	lastReload     prometheus.Gauge
	lastReloadTime prometheus.Gauge
	reloads        *prometheus.CounterVec
	tally          reloadTally
}

// reloadTally is what the reload metrics say, handed over across a re-exec
// so that they go on from there.
type reloadTally struct {
	Success  float64 `json:"success"`
	Failure  float64 `json:"failure"`
	Last     float64 `json:"last"` // bpfsup_last_reload_success
	LastTime float64 `json:"last_time"`
}

// newMetrics makes the metrics, the reload metrics going on from carried
// when it is not nil.
func newMetrics(carried *reloadTally) *metrics {
	m := &metrics{
		reg:            prometheus.NewRegistry(),
		childUp:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "bpfsup_child_up", Help: "1 while the child runs."}),
		restarts:       prometheus.NewCounter(prometheus.CounterOpts{Name: "bpfsup_child_restarts_total", Help: "Times the child was started again."}),
		startLimitHits: prometheus.NewCounter(prometheus.CounterOpts{Name: "bpfsup_start_limit_hits_total", Help: "Times the start limit stopped restarts."}),
		objects:        prometheus.NewGauge(prometheus.GaugeOpts{Name: "bpfsup_objects", Help: "BPF objects installed."}),
		maps:           prometheus.NewGauge(prometheus.GaugeOpts{Name: "bpfsup_maps", Help: "Maps pinned."}),
		programs:       prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "bpfsup_programs", Help: "Programs, by how the last install got them (adopted from a pin or loaded)."}, []string{"how"}),
		links:          prometheus.NewGauge(prometheus.GaugeOpts{Name: "bpfsup_links", Help: "Links pinned and open."}),
		lastReload:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "bpfsup_last_reload_success", Help: "1 if the last reload succeeded, 0 if it failed, -1 before any."}),
		lastReloadTime: prometheus.NewGauge(prometheus.GaugeOpts{Name: "bpfsup_last_reload_timestamp_seconds", Help: "When the last reload ended."}),
		reloads:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: "bpfsup_reloads_total", Help: "Reloads, by result."}, []string{"result"}),
	}
	m.tally = reloadTally{Last: -1}
	if carried != nil {
		m.tally = *carried
	}
	m.reloads.WithLabelValues("success").Add(m.tally.Success)
	m.reloads.WithLabelValues("failure").Add(m.tally.Failure)
	m.lastReload.Set(m.tally.Last)
	m.lastReloadTime.Set(m.tally.LastTime)
	m.reg.MustRegister(m.childUp, m.restarts, m.startLimitHits, m.objects, m.maps, m.programs, m.links,
		m.lastReload, m.lastReloadTime, m.reloads)
	return m
}

func (m *metrics) setReload(err error) {
	m.tally.LastTime = float64(time.Now().Unix())
	m.lastReloadTime.Set(m.tally.LastTime)
	if err != nil {
		m.tally.Last = 0
		m.tally.Failure++
		m.reloads.WithLabelValues("failure").Inc()
	} else {
		m.tally.Last = 1
		m.tally.Success++
		m.reloads.WithLabelValues("success").Inc()
	}
	m.lastReload.Set(m.tally.Last)
}

func (s *supervisor) updateMetrics() {
	if s.metrics == nil {
		return
	}
	var maps, links, adopted, loaded int
	for _, in := range s.objects {
		m, _, l, a, ld := in.Counts()
		maps, links, adopted, loaded = maps+m, links+l, adopted+a, loaded+ld
	}
	s.metrics.objects.Set(float64(len(s.objects)))
	s.metrics.maps.Set(float64(maps))
	s.metrics.links.Set(float64(links))
	s.metrics.programs.WithLabelValues("adopted").Set(float64(adopted))
	s.metrics.programs.WithLabelValues("loaded").Set(float64(loaded))
}

type metricsServer struct {
	l    *pausableListener
	srv  *http.Server
	busy *busyConns
}

// listenMetrics listens on addr, or takes the listener inherited across a
// re-exec when it is one on addr.
func listenMetrics(addr string, inherited *os.File) (net.Listener, error) {
	if l := inheritedTCP(addr, inherited); l != nil {
		return l, nil
	}
	if err := config.CheckMetricsAddr(addr); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics address %s: %w", addr, err)
	}
	return l, nil
}

// serveOn makes the metrics server that will serve on l.
func (m *metrics) serveOn(l net.Listener) *metricsServer {
	// The Go and process collectors cost milliseconds to build (runtime/metrics
	// descriptions, regexps): a start without --metrics-addr skips them.
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	ms := &metricsServer{l: newPausableListener(l.(*net.TCPListener)), busy: newBusyConns()}
	// A connection is busy from its accept until it goes idle between
	// requests, or closes.
	ms.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ConnState: func(c net.Conn, st http.ConnState) {
		ms.busy.mark(c, st == http.StateNew || st == http.StateActive)
	}}
	return ms
}

// quiesce stops taking scrapes, closes idle connections and waits until the
// scrapes taken are answered, for a re-exec.
func (ms *metricsServer) quiesce() {
	ms.l.pause(quiesceTimeout)
	ms.srv.SetKeepAlivesEnabled(false)
	ms.busy.wait(quiesceTimeout)
}

// resume serves again after a re-exec that did not happen.
func (ms *metricsServer) resume() {
	ms.srv.SetKeepAlivesEnabled(true)
	ms.l.resume()
}

func inheritedTCP(addr string, f *os.File) net.Listener {
	if f == nil {
		return nil
	}
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		return nil
	}
	tl, ok := l.Addr().(*net.TCPAddr)
	host, port, _ := net.SplitHostPort(addr)
	if !ok || (port != "0" && port != strconv.Itoa(tl.Port)) || !hostIs(host, tl.IP) {
		l.Close()
		return nil
	}
	return l
}

// hostIs says whether a listener on ip is one on host (of HOST:PORT): a
// configuration that moved the metrics from 127.0.0.1 to 0.0.0.0 across a
// re-exec must not keep the old socket.
func hostIs(host string, ip net.IP) bool {
	if host == "" {
		return ip.IsUnspecified()
	}
	if h := net.ParseIP(host); h != nil {
		// Go listens on 0.0.0.0 with a dual-stack socket, on [::].
		return h.Equal(ip) || (h.IsUnspecified() && ip.IsUnspecified())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupIP(ctx, "ip", host)
	if err != nil {
		return false
	}
	for _, h := range ips {
		if h.Equal(ip) {
			return true
		}
	}
	return false
}

func (ms *metricsServer) addr() string { return ms.l.Addr().String() }

func (ms *metricsServer) serve() error {
	err := ms.srv.Serve(ms.l)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func (ms *metricsServer) close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = ms.srv.Shutdown(ctx)
}
