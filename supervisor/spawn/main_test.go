package spawn

import (
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/bpfsup/bpfsup/handoff"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// The test binary is also the application that Start runs: started
// with childEnv set, TestMain plays that part instead of running the tests.
const (
	childEnv = "BPFSUP_HANDOFF_TEST_CHILD"
	// queriesEnv lists the names the child looks up, comma-separated: a map
	// for each, or a program for those prefixed "prog:".
	queriesEnv = "BPFSUP_HANDOFF_TEST_QUERIES"
	// writeEnv names a handed array map (u32 -> u64) into whose key 0 the
	// child writes its pid.
	writeEnv = "BPFSUP_HANDOFF_TEST_WRITE"
	// helperBinEnv and appEnv tell the intermediate child which exec helper
	// and which application to start; asNobodyEnv makes it drop to nobody.
	helperBinEnv = "BPFSUP_HANDOFF_TEST_HELPER_BIN"
	appEnv       = "BPFSUP_HANDOFF_TEST_APP"
	asNobodyEnv  = "BPFSUP_HANDOFF_TEST_AS_NOBODY"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(runChild(mode))
	}
	code := testutil.CheckNoFDLeaks(m)
	testutil.BuildCleanup()
	os.Exit(code)
}

// childReport is what the "report" child prints, as one JSON line.
type childReport struct {
	Pid           int
	ListenPID     string
	ListenFDs     string
	ListenFDNames string
	// ListenPIDFDID is LISTEN_PIDFDID, "<unset>" when it is not set.
	ListenPIDFDID string
	PinRoot       string
	// FDs are the open fds at the child's start with their targets.
	FDs map[int]string
	// Inherited are the fds among FDs without close-on-exec: exactly those
	// that came through exec, as everything the child's Go runtime opens
	// itself (its netpoller, its cgroup files) is close-on-exec, and
	// anything close-on-exec in the parent was closed by the exec.
	Inherited []int
	// Status holds the Uid, Gid, Groups and CapEff lines of /proc/self/status.
	Status map[string]string
	// Names are the names handoff.Files returned.
	Names []string
	// EnvAfter holds the protocol's variables after handoff.Files took the fds.
	EnvAfter []string
	// IDs and Errors are the results of the queries, by name.
	IDs    map[string]uint32
	Errors map[string]string
	// Wrote is the error of the write, "" when it worked.
	Wrote string
}

const reportPrefix = "REPORT "

func runChild(mode string) int {
	switch mode {
	case "report":
		return reportChild()
	case "sleep":
		// Stay alive until killed.
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM)
		fmt.Printf("grandchild pid=%d\n", os.Getpid())
		<-sig
		return 0
	case "intermediate":
		return intermediateChild()
	}
	fmt.Fprintf(os.Stderr, "unknown child mode %q\n", mode)
	return 2
}

func reportChild() int {
	// First of all, before this process opens anything of its own.
	fds, err := testutil.SnapshotFDs()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	r := childReport{
		Pid:           os.Getpid(),
		ListenPID:     os.Getenv(handoff.EnvListenPID),
		ListenFDs:     os.Getenv(handoff.EnvListenFDs),
		ListenFDNames: os.Getenv(handoff.EnvListenFDNames),
		ListenPIDFDID: "<unset>",
		PinRoot:       handoff.PinRoot(),
		FDs:           fds,
		Status:        map[string]string{},
		IDs:           map[string]uint32{},
		Errors:        map[string]string{},
	}
	if v, ok := os.LookupEnv(handoff.EnvListenPIDFDID); ok {
		r.ListenPIDFDID = v
	}
	for fd := range fds {
		if !closeOnExec(fd) {
			r.Inherited = append(r.Inherited, fd)
		}
	}
	slices.Sort(r.Inherited)
	status, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(status), "\n") {
		k, v, _ := strings.Cut(line, ":")
		switch k {
		case "Uid", "Gid", "Groups", "CapEff":
			r.Status[k] = strings.TrimSpace(v)
		}
	}

	files, err := handoff.Files()
	if err != nil {
		r.Errors["Files"] = err.Error()
	}
	for _, f := range files {
		r.Names = append(r.Names, f.Name)
	}
	for _, v := range []string{handoff.EnvListenFDs, handoff.EnvListenPID, handoff.EnvListenFDNames} {
		if val, ok := os.LookupEnv(v); ok {
			r.EnvAfter = append(r.EnvAfter, v+"="+val)
		}
	}

	for _, q := range strings.Split(os.Getenv(queriesEnv), ",") {
		if q == "" {
			continue
		}
		if name, ok := strings.CutPrefix(q, "prog:"); ok {
			p, err := handoff.Program(name)
			if err != nil {
				r.Errors[q] = err.Error()
				continue
			}
			if info, err := p.Info(); err == nil {
				id, _ := info.ID()
				r.IDs[q] = uint32(id)
			} else {
				r.Errors[q] = err.Error()
			}
			p.Close()
			continue
		}
		m, err := handoff.Map(q)
		if err != nil {
			r.Errors[q] = err.Error()
			continue
		}
		if info, err := m.Info(); err == nil {
			id, _ := info.ID()
			r.IDs[q] = uint32(id)
		} else {
			r.Errors[q] = err.Error()
		}
		m.Close()
	}

	if name := os.Getenv(writeEnv); name != "" {
		r.Wrote = writePid(name)
	}

	out, err := json.Marshal(r)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("%s%s\n", reportPrefix, out)
	return 0
}

// closeOnExec reports whether fd has close-on-exec set, from the flags in
// /proc/self/fdinfo (octal, O_CLOEXEC among them).
func closeOnExec(fd int) bool {
	info, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(fd))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(info), "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			flags, err := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
			return err == nil && flags&unix.O_CLOEXEC != 0
		}
	}
	return false
}

func writePid(name string) string {
	m, err := handoff.Map(name)
	if err != nil {
		return err.Error()
	}
	defer m.Close()
	if err := m.Put(uint32(0), uint64(os.Getpid())); err != nil {
		return err.Error()
	}
	return ""
}

// intermediateChild stands in for a supervisor: it starts the application
// through the exec helper, says so, and waits to be killed.
func intermediateChild() int {
	c := Child{
		Helper: os.Getenv(helperBinEnv),
		Args:   []string{os.Getenv(appEnv)},
		Env:    append(os.Environ(), childEnv+"=sleep"),
	}
	if os.Getenv(asNobodyEnv) != "" {
		c.Credential = &Credential{UID: 65534, GID: 65534, Groups: []uint32{}}
	}
	// A real map fd goes along, as from a supervisor.
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	f, err := dupFile(m.FD(), "m")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	c.Files = []handoff.NamedFile{{Name: "mid/maps/m", File: f}}
	p, err := Start(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("started pid=%d\n", p.Pid)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	<-sig
	return 0
}
