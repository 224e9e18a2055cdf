package hooks

import "testing"

// FuzzParseHook checks that Parse never panics, and that a spec it accepts
// prints (Spec.String) to a string that parses back to the same spec.
func FuzzParseHook(f *testing.F) {
	// The seed corpus is in testdata/fuzz/FuzzParseHook.
	f.Fuzz(func(t *testing.T, s string) {
		spec, err := Parse(s)
		if err != nil {
			return
		}
		again, err := Parse(spec.String())
		if err != nil {
			t.Fatalf("Parse(%q) = %+v, whose String %q does not parse: %v", s, spec, spec.String(), err)
		}
		if again != spec {
			t.Fatalf("Parse(%q) = %+v, but Parse(%q) = %+v", s, spec, spec.String(), again)
		}
	})
}
