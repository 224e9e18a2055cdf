package environ

import (
	"slices"
	"testing"
)

func TestWithout(t *testing.T) {
	env := []string{"A=1", "LISTEN_FDS=2", "AB=3", "B", "LISTEN_FDS=4", "C==5", "=6", "LISTEN_FDSX=1", "D=x=y"}
	orig := slices.Clone(env)
	got := Without(env, "LISTEN_FDS", "B", "C")
	want := []string{"A=1", "AB=3", "=6", "LISTEN_FDSX=1", "D=x=y"}
	if !slices.Equal(got, want) {
		t.Errorf("Without = %q, want %q", got, want)
	}
	if !slices.Equal(env, orig) {
		t.Errorf("Without modified its input: %q", env)
	}
	if got := Without(env); !slices.Equal(got, env) {
		t.Errorf("Without with no names = %q, want the input", got)
	}
}
