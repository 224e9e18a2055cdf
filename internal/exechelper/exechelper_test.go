package exechelper

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestSplit(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", []string{""}},
		{"a", []string{"a"}},
		{"a:b", []string{"a", "b"}},
		{":a:", []string{"", "a", ""}},
		{"/usr/bin::/bin", []string{"/usr/bin", "", "/bin"}},
	}
	for _, tt := range tests {
		if got := split(tt.in, ':'); !slices.Equal(got, tt.want) {
			t.Errorf("split(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestWithoutVars(t *testing.T) {
	env := []string{"A=1", "LISTEN_PID=7", "B=x=y", "BPFSUP_EXEC_UID=0", "LISTEN_PIDX=1", "C"}
	got := withoutVars(env, EnvUID, envListenPID)
	want := []string{"A=1", "B=x=y", "LISTEN_PIDX=1", "C"}
	if !slices.Equal(got, want) {
		t.Errorf("withoutVars = %q, want %q", got, want)
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	mk := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	exe := mk("app", 0o755)
	mk("data", 0o644)
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	t.Setenv("PATH", other+"::"+dir)
	t.Chdir(other)

	tests := []struct {
		file    string
		want    string
		errWant error // nil: found
	}{
		{"app", exe, nil},            // found in the last entry
		{exe, exe, nil},              // a path is taken as it is
		{"data", "", errNotFound},    // not executable: skipped
		{"sub", "", errNotFound},     // a directory: skipped
		{"nothing", "", errNotFound}, // nowhere
		{filepath.Join(dir, "data"), "", os.ErrPermission},
		{filepath.Join(dir, "nothing"), "", os.ErrNotExist},
	}
	for _, tt := range tests {
		got, err := lookPath(tt.file)
		if tt.errWant == nil {
			if err != nil || got != tt.want {
				t.Errorf("lookPath(%q) = %q, %v; want %q", tt.file, got, err, tt.want)
			}
			continue
		}
		if !errors.Is(err, tt.errWant) {
			t.Errorf("lookPath(%q) = %q, %v; want an error wrapping %v", tt.file, got, err, tt.errWant)
		}
	}

	// An empty PATH entry is the working directory.
	t.Chdir(dir)
	if got, err := lookPath("app"); err != nil || got != "./app" {
		t.Errorf("lookPath(app) from its directory = %q, %v; want ./app", got, err)
	}
}
