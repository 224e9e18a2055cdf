// Package control is the client's side of a running supervisor's control
// socket, and what travels on it: one request line ("reload", "status"),
// one JSON reply (Reply), with what a reload did (ReloadReport). The
// supervisor serves it (package supervisor); `bpfsup reload` asks.
//
// The socket is <state-dir>/supervisor-<pid>.sock, 0600 root. A request
// opens a connection and closes it; nothing is kept.
package control

import (
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Socket is the path of the control socket of the supervisor with
// pid in stateDir. `bpfsup reload` finds the pid by the locks.
func Socket(stateDir string, pid int) string {
	return filepath.Join(stateDir, "supervisor-"+strconv.Itoa(pid)+".sock")
}

// Reply is the answer to a control request, one JSON line.
type Reply struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	// Took is how long the reload took.
	Took string `json:"took,omitempty"`
	// Reload says what a reload did, when it succeeded.
	Reload *ReloadReport `json:"reload,omitempty"`
	// Status is the supervisor's status, for "status".
	Status json.RawMessage `json:"status,omitempty"`
}

// Request sends one request to the supervisor's control socket and returns
// its reply.
func Request(socket, req string, timeout time.Duration) (*Reply, error) {
	conn, err := net.DialTimeout("unix", socket, time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect to supervisor at %s: %w", socket, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write([]byte(req + "\n")); err != nil {
		return nil, err
	}
	var reply Reply
	if err := json.NewDecoder(conn).Decode(&reply); err != nil {
		return nil, fmt.Errorf("read reply of supervisor: %w", err)
	}
	return &reply, nil
}

// ReloadReport is what a reload did, for the caller of `bpfsup reload`.
type ReloadReport struct {
	// Objects holds one entry per object, in configuration order.
	Objects []ObjectReport `json:"objects"`
	// Load is the time spent loading programs, the verifier's time
	// included, over every object.
	Load time.Duration `json:"load_ns"`
	// Swap is the time spent swapping links (from the first swap to the
	// last), over every object.
	Swap time.Duration `json:"swap_ns"`
	// Swapped is the time from the start of the reload until every link of
	// every object ran its new program.
	Swapped time.Duration `json:"swapped_ns"`
	// Took is the whole reload, manifests and the child included.
	Took time.Duration `json:"took_ns"`
	// Child says what happened to the child: "restarted", "signalled
	// SIGHUP", "left running", "unchanged" or "none".
	Child string `json:"child,omitempty"`
}

// ObjectReport is what a reload did to one object.
type ObjectReport struct {
	Name string `json:"name"`
	// Generation is the object's generation after the reload; it grows by
	// one when a program changed.
	Generation uint64 `json:"generation"`
	Changed    bool   `json:"changed"`
	// Loaded lists the programs loaded anew (the verifier ran).
	Loaded []string `json:"loaded,omitempty"`
	// Swapped lists the links whose program was swapped in place: same
	// link id, BPF_LINK_UPDATE with BPF_F_REPLACE.
	Swapped []string `json:"swapped,omitempty"`
	// Replaced lists the links replaced make-before-break: new link id.
	Replaced []string `json:"replaced,omitempty"`
	// Maps lists the maps replaced by new ones (reset or migrated).
	Maps []string `json:"maps_replaced,omitempty"`
}

// String says it in one line per object.
func (r *ReloadReport) String() string {
	var b strings.Builder
	for i, o := range r.Objects {
		if i > 0 {
			b.WriteString("\n")
		}
		if !o.Changed {
			fmt.Fprintf(&b, "object %s: unchanged, generation %d", o.Name, o.Generation)
			continue
		}
		fmt.Fprintf(&b, "object %s: generation %d", o.Name, o.Generation)
		list := func(what string, names []string) {
			if len(names) > 0 {
				fmt.Fprintf(&b, "; %s: %s", what, strings.Join(names, ", "))
			}
		}
		list("loaded", o.Loaded)
		list("swapped in place", o.Swapped)
		list("replaced make-before-break", o.Replaced)
		list("maps replaced", o.Maps)
	}
	fmt.Fprintf(&b, "\nload %s, links swapped %s after the request (swap phase %s), child %s",
		r.Load.Round(time.Microsecond), r.Swapped.Round(time.Microsecond), r.Swap.Round(time.Microsecond), r.Child)
	return b.String()
}
