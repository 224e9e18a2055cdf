package spawn

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// The default helper is the native one on x86-64, and the child gets its
// own pid as LISTEN_PID through it.
func TestDefaultHelperIsNative(t *testing.T) {
	testutil.RequireRoot(t)
	if runtime.GOARCH != "amd64" {
		t.Skipf("no native exec helper on %s: the shell is the default", runtime.GOARCH)
	}
	if got, err := (Child{}).helper(); err != nil || got != NativeHelper {
		t.Fatalf("default helper %q, %v; want the native one", got, err)
	}
	c := mustStart(t, Child{Args: []string{testExe(t)}, Env: append(os.Environ(), childEnv+"=report")})
	if r := c.report(t); r.ListenPID != strconv.Itoa(c.Pid) || c.Helper != "native" {
		t.Fatalf("LISTEN_PID=%q, child is %d, started by the %s helper", r.ListenPID, c.Pid, c.Helper)
	}
}

// A kernel that will not execute the native helper (here: an image it does
// not know how to run, as a memfd_noexec policy or a security module would
// refuse it) costs the native helper, not the start: the child starts
// through the shell, and so do later starts.
func TestNativeHelperRefused(t *testing.T) {
	testutil.RequireRoot(t)
	if NativeHelperImage() == nil {
		t.Skipf("no native exec helper on %s", runtime.GOARCH)
	}
	saved := nativeImage
	nativeImage = []byte("not a program")
	t.Cleanup(func() { nativeImage = saved; nativeRefused.Store(false) })

	c := mustStart(t, Child{Args: []string{testExe(t)}, Env: append(os.Environ(), childEnv+"=report")})
	if r := c.report(t); r.ListenPID != strconv.Itoa(c.Pid) {
		t.Fatalf("LISTEN_PID=%q, child is %d", r.ListenPID, c.Pid)
	}
	if !nativeRefused.Load() || c.Helper != "shell" {
		t.Fatalf("started by the %s helper; the refused native helper is still the default: %v", c.Helper, !nativeRefused.Load())
	}
	if got, _ := (Child{}).helper(); got != ShellHelper {
		t.Fatalf("default helper after the refusal %q, want %s", got, ShellHelper)
	}
	// Named explicitly, it is an error that says so.
	_, err := Start(Child{Helper: NativeHelper, Args: []string{"true"}})
	if err == nil || !strings.Contains(err.Error(), "exec format error") || !strings.Contains(err.Error(), "--exec-helper shell") {
		t.Fatalf("start through the refused native helper: %v, want exec format error and the way around it", err)
	}
}

// The native helper runs what sh -c 'exec "$@"' would: a command found in
// the child's PATH, a script without #! through /bin/sh, and fails as the
// shell does, 126 for a file it cannot execute.
func TestNativeHelperLikeShell(t *testing.T) {
	testutil.RequireRoot(t)
	if NativeHelperImage() == nil {
		t.Skipf("no native exec helper on %s", runtime.GOARCH)
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "script")
	if err := os.WriteFile(script, []byte("echo ran $0 $1 $LISTEN_PID $$\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	if err := os.WriteFile(data, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, cmd, path string
		status          int
		out             string
	}{
		{"script by path", script, "", 0, "ran " + script + " arg"},
		{"script found in PATH", "script", "/nonexistent:" + dir, 0, "ran " + script + " arg"},
		{"not executable", data, "", 126, "bpfsup exec: " + data + ": permission denied"},
		{"not executable in PATH", "data", dir, 126, "permission denied"},
		{"not in PATH", "script", "/nonexistent", 127, "bpfsup exec: script: not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := os.Environ()
			if tc.path != "" {
				env = append(env, "PATH="+tc.path)
			}
			var out bytes.Buffer
			p, st := runToExit(t, Child{Helper: NativeHelper, Args: []string{tc.cmd, "arg"}, Env: env, Stdout: &out, Stderr: &out})
			want := tc.out
			if tc.status == 0 {
				want += " " + strconv.Itoa(p.Pid) + " " + strconv.Itoa(p.Pid)
			}
			if st.ExitCode() != tc.status || !strings.Contains(out.String(), want) {
				t.Fatalf("exit %d, output %q; want %d and %q", st.ExitCode(), out.String(), tc.status, want)
			}
		})
	}
}

// The committed helper is what its source builds to (make exec-helper).
func TestNativeHelperBuilt(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		t.Skipf("the native helper is built for amd64 only")
	}
	for _, tool := range []string{"make", "clang"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s to build the native helper with", tool)
		}
	}
	built := filepath.Join(t.TempDir(), "helper")
	cmd := exec.Command("make", "-s", "-B", "exec-helper", "EXEC_HELPER="+built)
	cmd.Dir = filepath.Join("..", "..")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make exec-helper: %v\n%s", err, out)
	}
	got, err := os.ReadFile(built)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, NativeHelperImage()) {
		t.Fatalf("nativehelper/helper_amd64.bin (%d bytes) is not what nativehelper/helper.c builds to (%d bytes): run make exec-helper", len(NativeHelperImage()), len(got))
	}
}

// --exec-helper's names stand for the helpers, and name the one a process
// was started by.
func TestHelperNamed(t *testing.T) {
	for name, want := range map[string]string{"": "", "shell": ShellHelper} {
		if got, err := HelperNamed(name); err != nil || got != want {
			t.Errorf("%q: %q, %v; want %q", name, got, err, want)
		}
	}
	if exe, _ := os.Executable(); exe == "" {
		t.Fatal("no executable")
	} else if got, err := HelperNamed("bpfsup"); err != nil || got != exe {
		t.Errorf("bpfsup: %q, %v; want %q", got, err, exe)
	}
	got, err := HelperNamed("native")
	if NativeHelperImage() != nil && (err != nil || got != NativeHelper) {
		t.Errorf("native: %q, %v", got, err)
	}
	if NativeHelperImage() == nil && (err == nil || !strings.Contains(err.Error(), runtime.GOARCH)) {
		t.Errorf("native without a native helper: %q, %v; want an error naming %s", got, err, runtime.GOARCH)
	}
	if _, err := HelperNamed("sh"); err == nil || !strings.Contains(err.Error(), "must be native, shell or bpfsup") {
		t.Errorf("sh: %v, want an error listing the names", err)
	}
	for _, name := range HelperNames {
		h, err := HelperNamed(name)
		if err != nil {
			continue
		}
		if helperName(h) != name {
			t.Errorf("%s: started processes would say %q", name, helperName(h))
		}
	}
}
