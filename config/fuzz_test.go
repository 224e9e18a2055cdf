package config

import "testing"

// FuzzParseConfig checks that ParseConfig never panics, and that a config it
// accepts has what it promises: a path for every object, a program and a
// hook for every attachment, valid map access modes.
func FuzzParseConfig(f *testing.F) {
	// The seed corpus is in testdata/fuzz/FuzzParseConfig.
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig(data)
		if err != nil {
			return
		}
		for i, o := range cfg.Objects {
			if o.Path == "" {
				t.Fatalf("accepted object %d without a path", i)
			}
			for _, a := range o.Attach {
				if a.Program == "" || a.Hook == "" {
					t.Fatalf("accepted attachment %+v without program or hook", a)
				}
			}
			for name, m := range o.Maps {
				if _, err := ParseAccess(string(m.Access)); err != nil {
					t.Fatalf("accepted map %s with access %q", name, m.Access)
				}
			}
		}
	})
}
