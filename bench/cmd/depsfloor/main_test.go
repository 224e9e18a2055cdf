package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestImportsWhatBpfsupImports: the floor links exactly the packages from
// outside the module and the standard library that bpfsup's own packages
// import, so that it stays the floor when bpfsup gains or drops one.
func TestImportsWhatBpfsupImports(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command to list the imports with (the kernels' VMs run test binaries only)")
	}
	const module = "github.com/bpfsup/bpfsup"
	out := goList(t, "-deps", "-f", `{{if not .Standard}}{{.ImportPath}} {{join .Imports " "}}{{end}}`, module+"/cmd/bpfsup")
	var want []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || (f[0] != module && !strings.HasPrefix(f[0], module+"/")) {
			continue
		}
		for _, imp := range f[1:] {
			// Outside the standard library: a dot in the first element.
			if first, _, _ := strings.Cut(imp, "/"); strings.Contains(first, ".") && !strings.HasPrefix(imp, module) {
				want = append(want, imp)
			}
		}
	}
	slices.Sort(want)
	want = slices.Compact(want)
	got := strings.Fields(goList(t, "-f", `{{join .Imports " "}}`, module+"/bench/cmd/depsfloor"))
	if !slices.Equal(got, want) {
		t.Errorf("depsfloor imports\n  %v\nbpfsup imports from outside\n  %v", got, want)
	}
}

func goList(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("go", append([]string{"list"}, args...)...).Output()
	if err != nil {
		t.Fatalf("go list %v: %v", args, err)
	}
	return string(out)
}
