package pinstore

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckName(t *testing.T) {
	for _, tc := range []struct {
		desc, name string
		ok         bool
		// inErr is a part of the error message that says what is wrong.
		inErr string
	}{
		{"plain", "fw", true, ""},
		{"all allowed bytes", "AZaz09_-", true, ""},
		{"link name", "xdp_fw-veth1", true, ""},
		{"at the limit", strings.Repeat("a", MaxNameLen), true, ""},
		{"empty", "", false, "empty"},
		{"dot", ".", false, `'.'`},
		{"dotdot", "..", false, `'.'`},
		{"file name with a dot", "fw.bpf", false, `'.'`},
		{"slash", "a/b", false, `'/'`},
		{"only a slash", "/", false, `'/'`},
		{"past the limit", strings.Repeat("a", MaxNameLen+1), false, "239 bytes, longer than 238"},
		{"unicode", "zähler", false, `'ä'`},
		{"space", "my map", false, `' '`},
		{"leading space", " fw", false, `' '`},
		{"newline", "fw\n", false, `'\n'`},
		{"nul", "fw\x00", false, `'\x00'`},
		{"colon", "fw:maps", false, `':'`},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			err := CheckName("map", tc.name)
			if tc.ok {
				if err != nil {
					t.Fatalf("CheckName(%q): %v", tc.name, err)
				}
				return
			}
			if !errors.Is(err, ErrBadName) {
				t.Fatalf("CheckName(%q) = %v, want ErrBadName", tc.name, err)
			}
			if !strings.HasPrefix(err.Error(), "map name") || !strings.Contains(err.Error(), tc.inErr) {
				t.Errorf("CheckName(%q) = %q, want the kind and %s in it", tc.name, err, tc.inErr)
			}
		})
	}
}

func TestObjectName(t *testing.T) {
	for in, want := range map[string]string{
		"/etc/bpfsup/fw.bpf.o":   "fw",
		"fw.bpf.o":               "fw",
		"fw.o":                   "fw",
		"fw":                     "fw",
		"./counter.bpf.o":        "counter",
		"/opt/x.d/dropfilter.o":  "dropfilter", // only the file name counts
		"drop-filter_2.bpf.o":    "drop-filter_2",
		"/usr/lib/bpf/.hidden.o": "", // CheckName then refuses it
	} {
		if got := ObjectName(in); got != want {
			t.Errorf("ObjectName(%q) = %q, want %q", in, got, want)
		}
	}
}

// An object's name may be longer than a pin's (no staging prefix), and the
// files of its lock and manifest still fit a file name.
func TestCheckObjectName(t *testing.T) {
	if err := CheckName("object", strings.Repeat("o", MaxObjectNameLen)); err != nil {
		t.Errorf("object name at the limit: %v", err)
	}
	if err := CheckName("object", strings.Repeat("o", MaxObjectNameLen+1)); !errors.Is(err, ErrBadName) {
		t.Errorf("object name past the limit: %v", err)
	}
	if n := len("." + strings.Repeat("o", MaxObjectNameLen) + ".json.tmp"); n != 255 {
		t.Errorf("the temporary manifest of the longest object name is %d bytes", n)
	}
}

func TestLinkName(t *testing.T) {
	for _, tc := range []struct {
		prog, target string
		once         bool
		want         string
	}{
		{"xdp_fw", "veth1", true, "xdp_fw"},
		{"xdp_fw", "", false, "xdp_fw"},
		{"xdp_fw", "veth1", false, "xdp_fw-veth1"},
		{"xdp_fw", "eth0.100", false, "xdp_fw-eth0_100"},
		{"egress", "/sys/fs/cgroup/app.slice", false, "egress-sys_fs_cgroup_app_slice"},
		{"count", "syscalls/sys_enter_openat", false, "count-syscalls_sys_enter_openat"},
		{"up", "/usr/bin/app:main", false, "up-usr_bin_app_main"},
		{"p", "vé0", false, "p-v__0"}, // every byte outside the set, not every rune
		{"p", strings.Repeat("x", 300), false, "p-" + strings.Repeat("x", MaxNameLen-2)},
	} {
		got := LinkName(tc.prog, tc.target, tc.once)
		if got != tc.want {
			t.Errorf("LinkName(%q, %q, %v) = %q, want %q", tc.prog, tc.target, tc.once, got, tc.want)
		}
		if err := CheckName("link", got); err != nil {
			t.Errorf("LinkName(%q, %q, %v) = %q, which CheckName refuses: %v", tc.prog, tc.target, tc.once, got, err)
		}
	}
}

func TestIsInternalMap(t *testing.T) {
	for name, want := range map[string]bool{
		".rodata": true, ".bss": true, ".data": true, ".data.config": true, ".kconfig": true,
		"counters": false, "drop_ports": false,
	} {
		if got := IsInternalMap(name); got != want {
			t.Errorf("IsInternalMap(%q) = %v, want %v", name, got, want)
		}
	}
}
