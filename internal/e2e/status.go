package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/bpfsup/bpfsup/internal/testutil"
	"github.com/bpfsup/bpfsup/status"
)

// Status runs `bpfsup status --json [args...]` in e's pin root and state
// directory and decodes what it prints. It fails the test when status exits
// non-zero or prints something that is not the status JSON. Only standard
// output is decoded: status writes to standard error only when it fails.
func Status(tb testing.TB, e *testutil.Env, args ...string) *status.Status {
	tb.Helper()
	args = append([]string{"--json"}, args...)
	out, err := output(exec.Command(e.Bin, e.Args("status", args...)...))
	if err != nil {
		tb.Fatalf("bpfsup status %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	var st status.Status
	if err := json.Unmarshal(out, &st); err != nil {
		tb.Fatalf("bpfsup status %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return &st
}

// ObjectStatus is `bpfsup status --json name`: the status of object name,
// which must be the one object that status shows.
func ObjectStatus(tb testing.TB, e *testutil.Env, name string) status.ObjectStatus {
	tb.Helper()
	st := Status(tb, e, name)
	if len(st.Objects) != 1 || st.Objects[0].Name != name {
		tb.Fatalf("bpfsup status --json %s: %d objects, want only %s: %+v", name, len(st.Objects), name, st.Objects)
	}
	return st.Objects[0]
}

// LinkStatus is the status that `bpfsup status --json` gives of the link
// named name of object; the test fails when there is none.
func LinkStatus(tb testing.TB, e *testutil.Env, object, name string) status.LinkStatus {
	tb.Helper()
	return FindLink(tb, FindObject(tb, Status(tb, e), object), name)
}

// FindObject is the object named name in st; the test fails when there is
// none.
func FindObject(tb testing.TB, st *status.Status, name string) status.ObjectStatus {
	tb.Helper()
	return find(tb, "status", "object", name, st.Objects, func(o status.ObjectStatus) string { return o.Name })
}

// FindMap is the map named name in o; the test fails when there is none.
func FindMap(tb testing.TB, o status.ObjectStatus, name string) status.MapStatus {
	tb.Helper()
	return find(tb, "object "+o.Name, "map", name, o.Maps, func(m status.MapStatus) string { return m.Name })
}

// FindProgram is the program named name in o; the test fails when there is
// none.
func FindProgram(tb testing.TB, o status.ObjectStatus, name string) status.ProgramStatus {
	tb.Helper()
	return find(tb, "object "+o.Name, "program", name, o.Programs, func(p status.ProgramStatus) string { return p.Name })
}

// FindLink is the link named name in o; the test fails when there is none.
func FindLink(tb testing.TB, o status.ObjectStatus, name string) status.LinkStatus {
	tb.Helper()
	return find(tb, "object "+o.Name, "link", name, o.Links, func(l status.LinkStatus) string { return l.Name })
}

// find is the element of items that nameOf calls name.
func find[T any](tb testing.TB, in, kind, name string, items []T, nameOf func(T) string) T {
	tb.Helper()
	for _, it := range items {
		if nameOf(it) == name {
			return it
		}
	}
	tb.Fatalf("%s has no %s %s in status: %+v", in, kind, name, items)
	var zero T
	return zero
}

// output runs cmd and returns what it wrote to standard output; its error
// says what cmd wrote to standard error.
func output(cmd *exec.Cmd) ([]byte, error) {
	out, err := cmd.Output()
	if ee, ok := errors.AsType[*exec.ExitError](err); ok && len(ee.Stderr) > 0 {
		err = fmt.Errorf("%w: %s", err, bytes.TrimSpace(ee.Stderr))
	}
	return out, err
}
