// Package scrape serves a promtext registry to Prometheus: GET or HEAD of
// /metrics over HTTP/1.x, keep-alive, nothing else, quiesced across a
// re-exec (internal/quiesce). It is not net/http because that package
// brings crypto/tls and x509 with it: 4.2 of the 14.7 MB of bpfsup's
// binary, every page of which a supervisor maps at each start and keeps
// resident while it waits (idle with ten objects: 12.4 MiB with it, 10.4 MiB
// without; make bench). Requests are parsed by net/textproto.
package scrape

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bpfsup/bpfsup/internal/promtext"
	"github.com/bpfsup/bpfsup/internal/quiesce"
)

const (
	// scrapeHeaderTimeout bounds the reading of one request, from its
	// first byte to the end of its headers.
	scrapeHeaderTimeout = 5 * time.Second
	// scrapeIdleTimeout closes a kept-alive connection that asks nothing
	// more (Prometheus scrapes every 15 s to 1 min by default).
	scrapeIdleTimeout = 3 * time.Minute
	// scrapeMaxHeader bounds a request's line and headers.
	scrapeMaxHeader = 16 << 10
)

// Server answers scrapes of a registry on its listener.
type Server struct {
	reg  *promtext.Registry
	l    *quiesce.Listener
	busy *quiesce.Busy

	mu     sync.Mutex
	idle   map[net.Conn]bool // every open connection: true between requests
	noKeep bool              // quiesced: answer what was asked, then close
	closed bool
	wg     sync.WaitGroup
}

// New makes the server of reg that will serve on l.
func New(reg *promtext.Registry, l *net.TCPListener) *Server {
	return &Server{reg: reg, l: quiesce.NewListener(l), busy: quiesce.NewBusy(), idle: map[net.Conn]bool{}}
}

// Addr is the listener's address.
func (ms *Server) Addr() string { return ms.l.Addr().String() }

// Listener is the listening socket, to hand over across a re-exec.
func (ms *Server) Listener() quiesce.DeadlineListener { return ms.l.DeadlineListener }

// Serve accepts until Close; each connection is answered on a goroutine of
// its own.
func (ms *Server) Serve() error {
	var delay time.Duration
	for {
		c, err := ms.l.Accept()
		if err != nil {
			ms.mu.Lock()
			closed := ms.closed
			ms.mu.Unlock()
			if closed {
				return nil
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of fds: wait for some to be closed, as net/http does.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		if !ms.track(c) {
			c.Close()
			return nil
		}
		go ms.handle(c)
	}
}

// track adds c to the open connections, busy from its accept until it goes
// idle between requests; false once the server is closed.
func (ms *Server) track(c net.Conn) bool {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if ms.closed {
		return false
	}
	ms.idle[c] = false
	ms.busy.Mark(c, true)
	ms.wg.Add(1)
	return true
}

// setIdle records whether c waits for a request; false when c should be
// closed instead (quiesced or closed while it was answering).
func (ms *Server) setIdle(c net.Conn, idle bool) bool {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if idle && (ms.noKeep || ms.closed) {
		return false
	}
	ms.idle[c] = idle
	ms.busy.Mark(c, !idle)
	return true
}

// handle answers the requests of c until it closes, asks to, or stays idle
// too long.
func (ms *Server) handle(c net.Conn) {
	defer func() {
		c.Close()
		ms.mu.Lock()
		delete(ms.idle, c)
		ms.mu.Unlock()
		ms.busy.Mark(c, false)
		ms.wg.Done()
	}()
	r := bufio.NewReaderSize(c, 4096)
	w := bufio.NewWriter(c)
	for first := true; ; first = false {
		if !first && !ms.setIdle(c, true) {
			return
		}
		_ = c.SetReadDeadline(time.Now().Add(scrapeIdleTimeout))
		if _, err := r.Peek(1); err != nil {
			return
		}
		if !ms.setIdle(c, false) {
			return
		}
		_ = c.SetReadDeadline(time.Now().Add(scrapeHeaderTimeout))
		keep := ms.answer(r, w)
		_ = c.SetReadDeadline(time.Time{})
		if w.Flush() != nil {
			return
		}
		if !keep {
			lingeringClose(c)
			return
		}
	}
}

// lingeringClose ends the answer's side of c and reads what the client
// still sends (a refused request's rest) for a moment, so that the close
// does not reset the connection before the client has read the answer.
func lingeringClose(c net.Conn) {
	tc, ok := c.(*net.TCPConn)
	if !ok || tc.CloseWrite() != nil {
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	_, _ = io.CopyN(io.Discard, c, 256<<10)
}

// answer reads one request from r and writes its answer to w; it reports
// whether the connection may carry another.
func (ms *Server) answer(r *bufio.Reader, w *bufio.Writer) (keep bool) {
	req, err := readScrape(r)
	if err != nil {
		writeAnswer(w, "400 Bad Request", "text/plain; charset=utf-8", []byte(err.Error()+"\n"), false, false)
		return false
	}
	ms.mu.Lock()
	keep = req.keepAlive && !ms.noKeep && !ms.closed
	ms.mu.Unlock()
	switch {
	case req.path != "/metrics":
		writeAnswer(w, "404 Not Found", "text/plain; charset=utf-8", []byte("404 page not found: bpfsup serves /metrics\n"), req.method == "HEAD", keep)
	case req.method != "GET" && req.method != "HEAD":
		fmt.Fprintf(w, "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		return false
	default:
		var body bytes.Buffer
		_ = ms.reg.Write(&body)
		writeAnswer(w, "200 OK", "text/plain; version=0.0.4; charset=utf-8", body.Bytes(), req.method == "HEAD", keep)
	}
	return keep
}

// scrapeRequest is what answer needs of a request.
type scrapeRequest struct {
	method, path string
	keepAlive    bool
}

var errRequestBody = errors.New("a request to bpfsup's metrics has no body")

// readScrape reads a request line and its headers (RFC 9112) from r.
func readScrape(r *bufio.Reader) (scrapeRequest, error) {
	tp := textproto.NewReader(bufio.NewReader(&limitedHeader{r: r, left: scrapeMaxHeader}))
	line, err := tp.ReadLine()
	if err != nil {
		return scrapeRequest{}, fmt.Errorf("request line: %w", err)
	}
	method, rest, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(rest, " ")
	major, minor, ok3 := parseHTTPVersion(proto)
	if !ok1 || !ok2 || !ok3 || major != 1 || method == "" || target == "" {
		return scrapeRequest{}, fmt.Errorf("malformed request line %q", line)
	}
	hdr, err := tp.ReadMIMEHeader()
	if err != nil {
		return scrapeRequest{}, fmt.Errorf("request headers: %w", err)
	}
	if hdr.Get("Transfer-Encoding") != "" || (hdr.Get("Content-Length") != "" && hdr.Get("Content-Length") != "0") {
		return scrapeRequest{}, errRequestBody
	}
	if i := strings.Index(target, "://"); i >= 0 { // absolute form
		target = target[i+3:]
		if j := strings.IndexByte(target, '/'); j >= 0 {
			target = target[j:]
		} else {
			target = "/"
		}
	}
	path, _, _ := strings.Cut(target, "?")
	conn := strings.ToLower(hdr.Get("Connection"))
	keep := (minor >= 1 && !strings.Contains(conn, "close")) || (minor == 0 && strings.Contains(conn, "keep-alive"))
	return scrapeRequest{method: method, path: path, keepAlive: keep}, nil
}

// limitedHeader reads from r at most left bytes, then fails: a request's
// head longer than scrapeMaxHeader is refused.
type limitedHeader struct {
	r    *bufio.Reader
	left int
}

// Read reads byte by byte, so that the request's head is taken from r and
// nothing after it (the next request of a kept-alive connection).
func (l *limitedHeader) Read(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, errors.New("request head too long")
	}
	if len(p) == 0 {
		return 0, nil
	}
	b, err := l.r.ReadByte()
	if err != nil {
		return 0, err
	}
	p[0] = b
	l.left--
	return 1, nil
}

func parseHTTPVersion(v string) (major, minor int, ok bool) {
	rest, ok := strings.CutPrefix(v, "HTTP/")
	if !ok || len(rest) != 3 || rest[1] != '.' {
		return 0, 0, false
	}
	a, err1 := strconv.Atoi(rest[:1])
	b, err2 := strconv.Atoi(rest[2:])
	return a, b, err1 == nil && err2 == nil
}

func writeAnswer(w *bufio.Writer, status, contentType string, body []byte, head, keep bool) {
	fmt.Fprintf(w, "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n", status, contentType, len(body))
	if !keep {
		w.WriteString("Connection: close\r\n")
	}
	w.WriteString("\r\n")
	if !head {
		w.Write(body)
	}
}

// Quiesce stops taking scrapes, closes idle connections and waits until the
// scrapes taken are answered, for a re-exec.
func (ms *Server) Quiesce() {
	ms.l.Pause(quiesce.Timeout)
	ms.mu.Lock()
	ms.noKeep = true
	ms.closeIdleLocked()
	ms.mu.Unlock()
	ms.busy.Wait(quiesce.Timeout)
}

// Resume serves again after a re-exec that did not happen.
func (ms *Server) Resume() {
	ms.mu.Lock()
	ms.noKeep = false
	ms.mu.Unlock()
	ms.l.Resume()
}

func (ms *Server) closeIdleLocked() {
	for c, idle := range ms.idle {
		if idle {
			c.Close()
		}
	}
}

// Close stops serving: the listener and idle connections are closed, and
// scrapes being answered get a second to finish.
func (ms *Server) Close() {
	ms.mu.Lock()
	ms.closed = true
	ms.closeIdleLocked()
	ms.mu.Unlock()
	ms.l.Close()
	done := make(chan struct{})
	go func() { ms.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
		ms.mu.Lock()
		for c := range ms.idle {
			c.Close()
		}
		ms.mu.Unlock()
	}
}
