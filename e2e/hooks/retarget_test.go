package hookstest

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/bpfsup/bpfsup/internal/e2e"
	"github.com/bpfsup/bpfsup/internal/testutil"
)

// TestRetargetLoadTimeHook: a program the kernel binds to its target at load
// time (tp_btf here; fentry and lsm alike) is loaded anew when a restart moves
// its attachment to another target, even though its instructions, and so
// its tag, are the same: adopting it would attach a program still bound to
// the old tracepoint.
func TestRetargetLoadTimeHook(t *testing.T) {
	env := testutil.MustEnv(t)
	obj := copyObject(t, t.TempDir(), "tpbtf")
	run := func(target string) (out string, tp string) {
		t.Helper()
		p := env.Start(t, "run", "-o", obj, "-a", "tp_btf_count@tp_btf:"+target, "--", "sleep", "1000")
		p.WaitOutput(t, "child started", 30*time.Second)
		info := e2e.PinnedLinkInfo(t, e2e.PinPath(env, "tpbtf", "links", "tp_btf_count"))
		if rt := info.RawTracepoint(); rt != nil {
			tp = rt.Name
		}
		p.Kill(syscall.SIGTERM)
		p.Wait(t, 20*time.Second)
		return p.Output(), tp
	}
	if _, tp := run("sys_enter"); tp != "sys_enter" {
		t.Fatalf("the link is on raw tracepoint %q, want sys_enter", tp)
	}
	out, tp := run("sys_exit")
	if tp != "sys_exit" {
		t.Fatalf("after moving the attachment to sys_exit the link is on %q:\n%s", tp, out)
	}
	if !strings.Contains(out, "loaded for another target") || !strings.Contains(out, "loaded=1") {
		t.Fatalf("the program was not loaded anew for its new target:\n%s", out)
	}
	out, tp = run("sys_exit")
	if tp != "sys_exit" || !strings.Contains(out, "adopted=1 loaded=0") {
		t.Fatalf("a restart with the same target did not adopt (link on %q):\n%s", tp, out)
	}
}
