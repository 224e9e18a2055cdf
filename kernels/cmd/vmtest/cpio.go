package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
)

// initramfs collects the files of an initramfs and writes them as a cpio
// archive in the "newc" format the kernel unpacks (Documentation/
// driver-api/early-userspace/buffer-format.rst). Paths are absolute; parent
// directories are made as needed.
type initramfs struct {
	entries map[string]entry
	// merged maps a top directory that is a symlink on the host ("/bin")
	// to its target ("/usr/bin"), so that a file added at /bin/x lands at
	// /usr/bin/x, behind the same symlink as on the host.
	merged map[string]string
}

type entry struct {
	mode   uint32 // with the file type bits
	data   []byte // contents, or a symlink's target
	source string // a host file to copy, when data is nil
}

const (
	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFLNK = 0o120000
)

func newInitramfs() *initramfs {
	return &initramfs{entries: map[string]entry{}, merged: map[string]string{}}
}

// canon is p with a leading merged directory replaced by its target.
func (r *initramfs) canon(p string) string {
	p = path.Clean(p)
	for link, target := range r.merged {
		if rest, ok := strings.CutPrefix(p, link+"/"); ok {
			return path.Join(target, rest)
		}
	}
	return p
}

func (r *initramfs) dir(p string) {
	p = r.canon(p)
	for p != "/" && p != "." {
		if _, ok := r.entries[p]; ok {
			return
		}
		r.entries[p] = entry{mode: sIFDIR | 0o755}
		p = path.Dir(p)
	}
}

// file adds a host file at p with the given permission bits.
func (r *initramfs) file(p, source string, perm uint32) {
	p = r.canon(p)
	r.dir(path.Dir(p))
	r.entries[p] = entry{mode: sIFREG | perm, source: source}
}

// bytes adds a file at p holding data.
func (r *initramfs) bytes(p string, data []byte, perm uint32) {
	p = r.canon(p)
	r.dir(path.Dir(p))
	r.entries[p] = entry{mode: sIFREG | perm, data: data}
}

// symlink adds a symlink; a top-level one (/bin -> usr/bin) also makes its
// directory merged (see canon).
func (r *initramfs) symlink(p, target string) {
	p = r.canon(p)
	if path.Dir(p) == "/" {
		r.merged[p] = path.Join("/", target)
	}
	r.dir(path.Dir(p))
	r.entries[p] = entry{mode: sIFLNK | 0o777, data: []byte(target)}
}

func (r *initramfs) has(p string) bool {
	_, ok := r.entries[r.canon(p)]
	return ok
}

// write writes the archive to w. Entries come in path order, so every
// directory precedes what it holds.
func (r *initramfs) write(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 1<<20)
	names := make([]string, 0, len(r.entries))
	for p := range r.entries {
		names = append(names, p)
	}
	// By components, so that "/a" comes before "/a/b".
	sort.Slice(names, func(i, j int) bool { return lessPath(names[i], names[j]) })
	ino := uint32(1)
	for _, p := range names {
		e := r.entries[p]
		data := e.data
		if e.source != "" && data == nil {
			var err error
			if data, err = os.ReadFile(e.source); err != nil {
				return fmt.Errorf("initramfs %s: %w", p, err)
			}
		}
		if err := writeEntry(bw, strings.TrimPrefix(p, "/"), e.mode, ino, data); err != nil {
			return err
		}
		ino++
	}
	if err := writeEntry(bw, "TRAILER!!!", 0, 0, nil); err != nil {
		return err
	}
	return bw.Flush()
}

func lessPath(a, b string) bool {
	ac, bc := strings.Split(a, "/"), strings.Split(b, "/")
	for i := 0; i < len(ac) && i < len(bc); i++ {
		if ac[i] != bc[i] {
			return ac[i] < bc[i]
		}
	}
	return len(ac) < len(bc)
}

func writeEntry(w io.Writer, name string, mode, ino uint32, data []byte) error {
	nlink := 1
	if mode&sIFDIR != 0 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	if _, err := io.WriteString(w, hdr+name+"\x00"); err != nil {
		return err
	}
	if err := pad(w, len(hdr)+len(name)+1); err != nil {
		return err
	}
	if _, err := w.Write(data); err != nil {
		return err
	}
	return pad(w, len(data))
}

// pad writes the zeros that align the next field to 4 bytes.
func pad(w io.Writer, n int) error {
	if r := n % 4; r != 0 {
		_, err := w.Write(make([]byte, 4-r))
		return err
	}
	return nil
}
