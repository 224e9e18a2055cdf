package handoff

import (
	"slices"
	"strconv"
	"strings"
	"testing"
)

// FuzzDecodeFDNames checks that Decode never panics on any LISTEN_FDS,
// LISTEN_PID and LISTEN_FDNAMES, that what it accepts is consistent (one
// name per fd, every name valid or "unknown"), and that names EncodeNames
// accepts come back from Decode unchanged.
func FuzzDecodeFDNames(f *testing.F) {
	const pid = 4242
	// The seed corpus is in testdata/fuzz/FuzzDecodeFDNames.
	f.Fuzz(func(t *testing.T, fds, lpid, names string) {
		env := []string{EnvListenFDs + "=" + fds, EnvListenPID + "=" + lpid, EnvListenFDNames + "=" + names}
		l, err := Decode(env, pid)
		if err == nil {
			if l.N < 0 || len(l.Names) != l.N {
				t.Fatalf("Decode(%q) = N %d with %d names", env, l.N, len(l.Names))
			}
			for _, n := range l.Names {
				if n != "unknown" && CheckName(n) != nil {
					t.Fatalf("Decode(%q) returned the invalid name %q", env, n)
				}
			}
		}

		// Round trip: names that encode decode to themselves.
		list := strings.Split(names, ":")
		enc, err := EncodeNames(list)
		if err != nil {
			return
		}
		l, err = Decode([]string{EnvListenFDs + "=" + strconv.Itoa(len(list)), EnvListenPID + "=" + strconv.Itoa(pid),
			EnvListenFDNames + "=" + enc}, pid)
		if err != nil {
			t.Fatalf("EncodeNames(%q) = %q, which Decode refuses: %v", list, enc, err)
		}
		if !slices.Equal(l.Names, list) {
			t.Fatalf("EncodeNames(%q) = %q, decoded as %q", list, enc, l.Names)
		}
	})
}
