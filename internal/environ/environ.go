// Package environ edits environments in the form of os.Environ. It imports
// nothing, so that the exec helper (internal/exechelper), which must be
// initialised before every other package of bpfsup, can use it too.
package environ

// Without returns env without the variables named: every entry whose name,
// the text before the first "=", is one of names. env is not modified.
func Without(env []string, names ...string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if !named(kv, names) {
			out = append(out, kv)
		}
	}
	return out
}

func named(kv string, names []string) bool {
	k := kv
	for i := 0; i < len(kv); i++ {
		if kv[i] == '=' {
			k = kv[:i]
			break
		}
	}
	for _, n := range names {
		if k == n {
			return true
		}
	}
	return false
}
