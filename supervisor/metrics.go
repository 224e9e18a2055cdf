package supervisor

import (
	"context"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/bpfsup/bpfsup/internal/promtext"

	"github.com/bpfsup/bpfsup/config"
)

// metrics are bpfsup's Prometheus metrics (internal/promtext: nothing of
// them costs anything until a scrape).
type metrics struct {
	reg            promtext.Registry
	childUp        *promtext.Value
	restarts       *promtext.Value
	startLimitHits *promtext.Value
	objects        *promtext.Value
	maps           *promtext.Value
	adopted        *promtext.Value
	loaded         *promtext.Value
	links          *promtext.Value
	lastReload     *promtext.Value
	lastReloadTime *promtext.Value
	reloadsOK      *promtext.Value
	reloadsFailed  *promtext.Value
	tally          reloadTally
	// targets are the programs and maps a scrape reads (stats.go).
	targets atomic.Pointer[statsTargets]
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
// when it is not nil; programStats adds each program's run statistics.
func newMetrics(carried *reloadTally, programStats bool) *metrics {
	m := &metrics{}
	r := &m.reg
	m.childUp = r.Gauge("bpfsup_child_up", "1 while the child runs.")
	m.restarts = r.Counter("bpfsup_child_restarts_total", "Times the child was started again.")
	m.startLimitHits = r.Counter("bpfsup_start_limit_hits_total", "Times the start limit stopped restarts.")
	m.objects = r.Gauge("bpfsup_objects", "BPF objects installed.")
	m.maps = r.Gauge("bpfsup_maps", "Maps pinned.")
	const programs = "Programs, by how the last install got them (adopted from a pin or loaded)."
	m.adopted = r.Gauge("bpfsup_programs", programs, "how", "adopted")
	m.loaded = r.Gauge("bpfsup_programs", programs, "how", "loaded")
	m.links = r.Gauge("bpfsup_links", "Links pinned and open.")
	m.lastReload = r.Gauge("bpfsup_last_reload_success", "1 if the last reload succeeded, 0 if it failed, -1 before any.")
	m.lastReloadTime = r.Gauge("bpfsup_last_reload_timestamp_seconds", "When the last reload ended.")
	m.reloadsOK = r.Counter("bpfsup_reloads_total", "Reloads, by result.", "result", "success")
	m.reloadsFailed = r.Counter("bpfsup_reloads_total", "Reloads, by result.", "result", "failure")
	m.tally = reloadTally{Last: -1}
	if carried != nil {
		m.tally = *carried
	}
	m.reloadsOK.Set(m.tally.Success)
	m.reloadsFailed.Set(m.tally.Failure)
	m.lastReload.Set(m.tally.Last)
	m.lastReloadTime.Set(m.tally.LastTime)
	r.Collect(collectStats(&m.targets, programStats))
	return m
}

func (m *metrics) setReload(err error) {
	m.tally.LastTime = float64(time.Now().Unix())
	m.lastReloadTime.Set(m.tally.LastTime)
	if err != nil {
		m.tally.Last = 0
		m.tally.Failure++
		m.reloadsFailed.Inc()
	} else {
		m.tally.Last = 1
		m.tally.Success++
		m.reloadsOK.Inc()
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
	s.metrics.adopted.Set(float64(adopted))
	s.metrics.loaded.Set(float64(loaded))
	if s.opts.MetricsAddr != "" {
		s.metrics.targets.Store(s.statsTargetsOf())
	}
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
