package crash

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// kinds are the values of pinstore.Kind: a crash point built as
// string(kind) + "/step" stands for one point per kind.
var kinds = []string{"maps", "programs", "links"}

// TestPointsMatchSources reads every Go source of the module and checks that
// each crash.At call names a listed point and that each listed point is named
// by some call, so that a step cannot be added without being listed (and so
// crash-tested by e2e/crash, which crashes at every point) or listed without
// existing.
func TestPointsMatchSources(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")
	called := map[string][]string{} // point -> where
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != root && (strings.HasPrefix(name, ".") || name == "testdata") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		alias := crashImportName(f)
		if alias == "" {
			return nil
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok || sel.Sel.Name != "At" {
				return true
			}
			if id, ok := sel.X.(*ast.Ident); !ok || id.Name != alias {
				return true
			}
			where := fset.Position(call.Pos()).String()
			names, ok := pointNames(call)
			if !ok {
				t.Errorf("%s: crash.At with an argument this test cannot read; use a string literal", where)
				return true
			}
			for _, n := range names {
				called[n] = append(called[n], where)
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	listed := Points()
	for name, where := range called {
		if !slices.Contains(listed, name) {
			t.Errorf("crash point %q (called at %s) is not listed in Points", name, strings.Join(where, ", "))
		}
	}
	for _, name := range listed {
		if len(called[name]) == 0 {
			t.Errorf("crash point %q is listed in Points but no crash.At call names it", name)
		}
	}
	if len(called) == 0 {
		t.Fatal("found no crash.At call at all: is the module root right?")
	}
	var all []string
	for name := range called {
		all = append(all, name)
	}
	sort.Strings(all)
	t.Logf("crash points called: %s", strings.Join(all, " "))
}

// crashImportName is the name under which f imports this package, or "".
func crashImportName(f *ast.File) string {
	for _, imp := range f.Imports {
		path, _ := strconv.Unquote(imp.Path.Value)
		if path != "github.com/bpfsup/bpfsup/internal/crash" {
			continue
		}
		if imp.Name != nil {
			return imp.Name.Name
		}
		return "crash"
	}
	return ""
}

// pointNames reads the point names a call of At can pass: a string literal,
// or string(kind) + "/step" for every kind.
func pointNames(call *ast.CallExpr) ([]string, bool) {
	if len(call.Args) != 1 {
		return nil, false
	}
	switch arg := call.Args[0].(type) {
	case *ast.BasicLit:
		if arg.Kind != token.STRING {
			return nil, false
		}
		s, err := strconv.Unquote(arg.Value)
		return []string{s}, err == nil
	case *ast.BinaryExpr:
		lit, ok := arg.Y.(*ast.BasicLit)
		if arg.Op != token.ADD || !ok || lit.Kind != token.STRING {
			return nil, false
		}
		conv, ok := arg.X.(*ast.CallExpr)
		if !ok || len(conv.Args) != 1 {
			return nil, false
		}
		if id, ok := conv.Fun.(*ast.Ident); !ok || id.Name != "string" {
			return nil, false
		}
		suffix, err := strconv.Unquote(lit.Value)
		if err != nil {
			return nil, false
		}
		var names []string
		for _, k := range kinds {
			names = append(names, k+suffix)
		}
		return names, true
	}
	return nil, false
}

func TestArmParsesCount(t *testing.T) {
	for _, tt := range []struct {
		env    string
		target string
		nth    int
	}{
		{"maps/created", "maps/created", 1},
		{"links/moved#3", "links/moved", 3},
		{"links/moved#0", "links/moved", 1},
		{"links/moved#x", "links/moved", 1},
	} {
		for _, v := range []string{EnvVar, StopEnvVar} {
			t.Setenv(EnvVar, "")
			t.Setenv(StopEnvVar, "")
			t.Setenv(v, tt.env)
			t.Setenv(TraceEnvVar, "")
			trace = nil
			arm()
			got := kill
			if v == StopEnvVar {
				got = stop
			}
			if got.step != tt.target || got.nth != tt.nth || !active {
				t.Errorf("%s=%q: target %q #%d (active %v), want %q #%d", v, tt.env, got.step, got.nth, active, tt.target, tt.nth)
			}
		}
	}
	kill, stop, active = trigger{}, trigger{}, false
}
