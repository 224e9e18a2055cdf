package main

import (
	"strings"
	"testing"
	"time"
)

func TestReadConsole(t *testing.T) {
	console := `SeaBIOS noise
vminit: kernel 6.1.0-56-cloud-amd64 (6.1), 2 packages

VMTEST-START hooks
=== RUN   TestA
--- PASS: TestA (0.01s)
=== RUN   TestB
=== RUN   TestB/sub
    b_test.go:12: kernel 6.1 lacks tcx links (Linux 6.6+)
--- PASS: TestB (0.40s)
    --- SKIP: TestB/sub (0.22s)
=== RUN   TestC
    c_test.go:3: kernel 6.1 lacks netkit
--- SKIP: TestC (0.12s)
=== RUN   TestD
    d_test.go:9: boom
--- FAIL: TestD (0.12s)
FAIL

VMTEST-END hooks exit=1 seconds=3.5 leaks=0

VMTEST-START e2e/kernels
=== RUN   TestE
VMTEST-LEAK e2e/kernels network namespaces: bpfsup-x
VMTEST-END e2e/kernels exit=0 seconds=1.0 leaks=1
`
	res, done := readConsole(strings.NewReader(console), []pkg{{name: "hooks"}, {name: "e2e/kernels"}, {name: "never"}}, "6.1", time.Now())
	if done {
		t.Error("done without the DONE marker")
	}
	h := res[0]
	if !h.ended || h.exit != 1 || h.pass != 2 || h.fail != 1 || h.skip != 1 || h.ok() {
		t.Errorf("hooks: %+v", h)
	}
	want := []string{
		"TestB/sub: b_test.go:12: kernel 6.1 lacks tcx links (Linux 6.6+)",
		"TestC: c_test.go:3: kernel 6.1 lacks netkit",
	}
	if strings.Join(h.skips, "|") != strings.Join(want, "|") {
		t.Errorf("skips %q, want %q", h.skips, want)
	}
	if out := failureOutput(h); len(out) != 3 || !strings.Contains(out[1], "boom") {
		t.Errorf("failure output %q", out)
	}
	if got := failureMessages(h, 4, 14); len(got) != 1 || got[0] != "TestD: d_test.go:9: b..." {
		t.Errorf("failure messages %q, want the one line, cut to 14 characters", got)
	}
	if k := res[1]; k.leaks != 1 || k.ok() || len(k.leakLines) != 1 {
		t.Errorf("e2e/kernels: %+v", k)
	}
	if n := res[2]; n.started || n.ok() {
		t.Errorf("never: %+v", n)
	}
}

// The messages of a failed subtest, not the logs of the subtests that ran
// after it and passed.
func TestFailureMessagesSubtests(t *testing.T) {
	res := pkgResult{failed: []string{"TestSystemd"}, lines: strings.Split(`=== RUN   TestSystemd
=== RUN   TestSystemd/stop
    cases_test.go:40: started
    cases_test.go:41: the link is gone
=== RUN   TestSystemd/start
    cases_test.go:50: a log of a case that passed
--- FAIL: TestSystemd (3.00s)
    --- FAIL: TestSystemd/stop (1.00s)
    --- PASS: TestSystemd/start (2.00s)`, "\n")}
	got := failureMessages(res, 4, 300)
	want := []string{"TestSystemd/stop: cases_test.go:40: started", "TestSystemd/stop: cases_test.go:41: the link is gone"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("failure messages %q, want %q", got, want)
	}
}
