package fastio

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
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

// TestReadFileInto: one buffer passed from read to read, through files
// smaller and larger than it, holds each file's content and no more, and is
// reused in place when the file fits.
func TestReadFileInto(t *testing.T) {
	dir := t.TempDir()
	var buf []byte
	for _, size := range []int{4096, 10, 0, 100000, 3, 100000, 513} {
		path := filepath.Join(dir, "f")
		want := bytes.Repeat([]byte{byte('a' + size%26)}, size)
		if err := os.WriteFile(path, want, 0o600); err != nil {
			t.Fatal(err)
		}
		before := cap(buf)
		got, err := ReadFileInto(path, buf)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%d bytes after a buffer of %d: got %d bytes, %v", size, before, len(got), err)
		}
		if size < before && cap(got) != before {
			t.Errorf("%d bytes into a buffer of %d: a new buffer of %d", size, before, cap(got))
		}
		buf = got
	}
	if got, err := ReadFileInto("/proc/self/status", make([]byte, 0, 8)); err != nil || !bytes.Contains(got, []byte("\nPid:")) {
		t.Fatalf("/proc/self/status into 8 bytes: %q, %v", got, err)
	}
}

// TestStatusField: a field of /proc/self/status as the kernel says it, and
// false for a field or a process that is not there.
func TestStatusField(t *testing.T) {
	v, ok := StatusField("self", "PPid")
	if !ok || v != strconv.Itoa(os.Getppid()) {
		t.Fatalf("PPid of self = %q, %v; want %d", v, ok, os.Getppid())
	}
	if v, ok := StatusField("self", "NoSuchField"); ok {
		t.Fatalf("NoSuchField of self = %q, true", v)
	}
	if v, ok := StatusField("0", "PPid"); ok {
		t.Fatalf("PPid of pid 0 = %q, true", v)
	}
}
