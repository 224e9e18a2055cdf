package handoff

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// Every child application imports this package, so it must stay small: it
// adds nothing to a child's binary beyond what cilium/ebpf's link package
// already brings, and it runs no code at import.
func TestImportsStaySmall(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool on PATH to list imports with")
	}
	deps := func(pkg string) []string {
		out, err := exec.Command(goTool, "list", "-deps", pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		return strings.Fields(string(out))
	}
	base := deps("github.com/cilium/ebpf/link")
	var added []string
	for _, d := range deps(".") {
		if !slices.Contains(base, d) {
			added = append(added, d)
		}
	}
	if want := []string{"github.com/bpfsup/bpfsup/handoff"}; !slices.Equal(added, want) {
		t.Errorf("handoff adds %v to a child beyond cilium/ebpf/link, want only itself", added)
	}

	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			if fd, ok := d.(*ast.FuncDecl); ok && fd.Recv == nil && fd.Name.Name == "init" {
				t.Errorf("%s declares init(), which would run in every child", name)
			}
		}
	}
}
