package supervisor

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// copyFile copies src to dst with mode 0755.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

func runExit(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	default:
		t.Fatal(err)
		return -1
	}
}

// TestExecFileRunsWhatWasOpened: a binary installed at the path after the
// re-exec opened it (by rename, as package managers do) is not what runs.
func TestExecFileRunsWhatWasOpened(t *testing.T) {
	trueBin, err := exec.LookPath("true")
	if err != nil {
		t.Skip("no true(1):", err)
	}
	falseBin, err := exec.LookPath("false")
	if err != nil {
		t.Skip("no false(1):", err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "bpfsup")
	copyFile(t, trueBin, path)

	bin, err := openExec(path)
	if err != nil {
		t.Fatal(err)
	}
	defer bin.Close()
	if bin.file == nil {
		t.Fatalf("%s opened as a script", trueBin)
	}

	next := filepath.Join(dir, "bpfsup-new")
	copyFile(t, falseBin, next)
	if err := os.Rename(next, path); err != nil {
		t.Fatal(err)
	}
	if code := runExit(t, exec.Command(path).Run()); code != 1 {
		t.Fatalf("the file now at the path exited %d, want 1 (false)", code)
	}
	cmd := bin.command(context.Background())
	if cmd.Args[0] != path {
		t.Errorf("argv[0] = %q, want %q", cmd.Args[0], path)
	}
	if code := runExit(t, cmd.Run()); code != 0 {
		t.Fatalf("the opened binary exited %d, want 0: it ran the file installed after it was opened", code)
	}
	// The exec itself takes bin.run too: the opened file, not the path.
	var opened, run unix.Stat_t
	if err := unix.Fstat(int(bin.file.Fd()), &opened); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(bin.run, &run); err != nil {
		t.Fatal(err)
	}
	if opened.Ino != run.Ino || opened.Dev != run.Dev {
		t.Fatalf("%s is inode %d, the opened file %d", bin.run, run.Ino, opened.Ino)
	}
}

// TestExecFileScript: a script is run by its path (the kernel hands its
// interpreter the path, which a close-on-exec fd would not have).
func TestExecFileScript(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bpfsup")
	if err := os.WriteFile(path, []byte("#!/bin/sh\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	bin, err := openExec(path)
	if err != nil {
		t.Fatal(err)
	}
	defer bin.Close()
	if bin.run != path {
		t.Fatalf("script runs as %q, want its path", bin.run)
	}
	if code := runExit(t, bin.command(context.Background()).Run()); code != 3 {
		t.Fatalf("script exited %d, want 3", code)
	}
}
