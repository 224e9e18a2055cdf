package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// TestInitramfsNewc writes an archive and reads it back by the format's
// rules: headers, 4-byte alignment, parents before children, the trailer.
func TestInitramfsNewc(t *testing.T) {
	src := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(src, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := newInitramfs()
	r.file("/a/b/f", src, 0o755)
	r.bytes("/a/c", []byte("xyz12"), 0o600)
	r.symlink("/bin/sh", "busybox")
	var buf bytes.Buffer
	if err := r.write(&buf); err != nil {
		t.Fatal(err)
	}
	type ent struct {
		mode uint64
		data string
	}
	got := map[string]ent{}
	var order []string
	b := buf.Bytes()
	for off := 0; ; {
		if off%4 != 0 {
			t.Fatalf("header at %d is not 4-byte aligned", off)
		}
		hdr := string(b[off : off+110])
		if hdr[:6] != "070701" {
			t.Fatalf("bad magic at %d: %q", off, hdr[:6])
		}
		field := func(i int) uint64 {
			v, err := strconv.ParseUint(hdr[6+8*i:14+8*i], 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		mode, size, namesize := field(1), field(6), field(11)
		name := string(b[off+110 : off+110+int(namesize)-1])
		off = (off + 110 + int(namesize) + 3) &^ 3
		data := string(b[off : off+int(size)])
		off = (off + int(size) + 3) &^ 3
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-off)
			}
			break
		}
		got[name] = ent{mode, data}
		order = append(order, name)
	}
	want := map[string]ent{
		"a":      {sIFDIR | 0o755, ""},
		"a/b":    {sIFDIR | 0o755, ""},
		"a/b/f":  {sIFREG | 0o755, "hello"},
		"a/c":    {sIFREG | 0o600, "xyz12"},
		"bin":    {sIFDIR | 0o755, ""},
		"bin/sh": {sIFLNK | 0o777, "busybox"},
	}
	if len(got) != len(want) {
		t.Fatalf("entries %v, want %v", got, want)
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s: %+v, want %+v", name, got[name], w)
		}
	}
	seen := map[string]bool{}
	for _, name := range order {
		if dir := filepath.Dir(name); dir != "." && !seen[dir] {
			t.Errorf("%s comes before its directory %s", name, dir)
		}
		seen[name] = true
	}
}
