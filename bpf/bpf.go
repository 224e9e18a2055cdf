// Package bpf holds the BPF programs that bpfsup's tests and examples load:
// C sources beside the ELF objects compiled from them. The objects are
// committed, so building and testing need no clang; `make bpf` regenerates
// them (see README.md for what each object is for).
//
// The package only hands out bytes and file paths: it loads nothing and holds
// no file descriptors.
package bpf

import (
	"embed"
	"path/filepath"
	"runtime"
)

// Objects holds every compiled object at its top level, by file name
// ("counter.bpf.o").
//
//go:embed *.bpf.o
var Objects embed.FS

// Object returns the contents of the named object, for example
// "dropfilter.bpf.o". It panics if there is no such object: the set is fixed
// at build time, so a wrong name is a programming error.
func Object(name string) []byte {
	b, err := Objects.ReadFile(name)
	if err != nil {
		panic(err)
	}
	return b
}

// Path returns the absolute path of the named object in the source tree, for
// code that needs a file rather than bytes. It does not check that the file
// exists. It panics in a binary built with -trimpath, which does not know
// where its source tree is.
func Path(name string) string {
	_, file, _, ok := runtime.Caller(0)
	if !ok || !filepath.IsAbs(file) {
		panic("bpf: source path unknown (built with -trimpath?)")
	}
	return filepath.Join(filepath.Dir(file), name)
}
