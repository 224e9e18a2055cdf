package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// WriteConfig writes text, a bpfsup TOML configuration, to bpfsup.toml in a
// fresh temporary directory of the test and returns its path.
func WriteConfig(tb testing.TB, text string) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "bpfsup.toml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// PutObject writes the committed object name ("dropfilter_v2", see
// testutil.BPFObject) over the file dst in one rename, as a package upgrade
// does: a bpfsup that reads dst sees the old file or the new one, never
// half of it.
func PutObject(tb testing.TB, dst, name string) {
	tb.Helper()
	data, err := os.ReadFile(testutil.BPFObject(name))
	if err != nil {
		tb.Fatal(err)
	}
	tmp := dst + ".new"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		tb.Fatal(err)
	}
}

// DirEntries lists the names in dir, sorted; a missing dir has none.
func DirEntries(tb testing.TB, dir string) []string {
	tb.Helper()
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		tb.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

// TreeEntries lists the paths below dir, recursively, relative to it, in
// lexical order; a missing dir has none.
func TreeEntries(tb testing.TB, dir string) []string {
	tb.Helper()
	var names []string
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if errors.Is(err, os.ErrNotExist) {
			return filepath.SkipDir
		}
		if err != nil {
			return err
		}
		if path != dir {
			rel, _ := filepath.Rel(dir, path)
			names = append(names, rel)
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("walk %s: %v", dir, err)
	}
	return names
}

// Environ reads the environment of process pid.
func Environ(tb testing.TB, pid int) map[string]string {
	tb.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		tb.Fatalf("read environment of %d: %v", pid, err)
	}
	env := map[string]string{}
	for _, kv := range strings.Split(string(data), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env
}
