package fastio

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

func TestReadFile(t *testing.T) {
	dir := t.TempDir()
	for _, size := range []int{0, 1, 511, 512, 513, 4096, 100000} {
		path := filepath.Join(dir, "f")
		want := bytes.Repeat([]byte("abcdefg\n"), size/8+1)[:size]
		if err := os.WriteFile(path, want, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := ReadFile(path)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%d bytes: got %d bytes, %v", size, len(got), err)
		}
	}
	// Files whose size stat does not know: all of them still.
	got, err := ReadFile("/proc/self/status")
	if err != nil || !bytes.Contains(got, []byte("\nPid:")) || !bytes.HasSuffix(got, []byte("\n")) {
		t.Fatalf("/proc/self/status: %q, %v", got, err)
	}
	_, err = ReadFile(filepath.Join(dir, "missing"))
	_, osErr := os.ReadFile(filepath.Join(dir, "missing"))
	if !errors.Is(err, fs.ErrNotExist) || err.Error() != osErr.Error() {
		t.Fatalf("missing file: %v, os.ReadFile says %v", err, osErr)
	}
	_, err = ReadFile(dir)
	_, osErr = os.ReadFile(dir)
	if err == nil || err.Error() != osErr.Error() {
		t.Fatalf("directory: %v, os.ReadFile says %v", err, osErr)
	}
}
