package handoff

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestEncodeNames(t *testing.T) {
	for _, tc := range []struct {
		desc  string
		names []string
		want  string
		// inErr is part of the error, "" when there must be none.
		inErr string
	}{
		{"none", nil, "", ""},
		{"one", []string{"fw/maps/counters"}, "fw/maps/counters", ""},
		{"several", []string{"http", "fw/maps/counters", "fw/programs/xdp_fw"}, "http:fw/maps/counters:fw/programs/xdp_fw", ""},
		{"255 bytes", []string{strings.Repeat("n", 255)}, strings.Repeat("n", 255), ""},
		{"colon", []string{"ok", "fw:maps"}, "", `"fw:maps"`},
		{"empty", []string{"ok", ""}, "", `""`},
		{"space", []string{"my map"}, "", `"my map"`},
		{"newline", []string{"a\nb"}, "", `0xa`},
		{"unicode", []string{"zähler"}, "", `0xc3`},
		{"256 bytes", []string{strings.Repeat("n", 256)}, "", "1 to 255 bytes"},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			got, err := EncodeNames(tc.names)
			if tc.inErr == "" {
				if err != nil || got != tc.want {
					t.Fatalf("EncodeNames(%q) = %q, %v; want %q", tc.names, got, err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.inErr) {
				t.Fatalf("EncodeNames(%q) = %q, %v; want an error with %s", tc.names, got, err, tc.inErr)
			}
		})
	}
}

func TestDecode(t *testing.T) {
	const pid = 4242
	for _, tc := range []struct {
		desc    string
		env     []string
		want    Listen
		wantErr error
		// inErr is part of the error, "" when there must be none.
		inErr string
	}{
		{desc: "nothing handed", env: []string{"PATH=/bin", "HOME=/"}, wantErr: ErrNoHandoff},
		{desc: "names", env: []string{"LISTEN_FDS=2", "LISTEN_PID=4242", "LISTEN_FDNAMES=fw/maps/a:fw/maps/b"},
			want: Listen{N: 2, Names: []string{"fw/maps/a", "fw/maps/b"}}},
		{desc: "no pid", env: []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=a"}, want: Listen{N: 1, Names: []string{"a"}}},
		{desc: "zero fds", env: []string{"LISTEN_FDS=0", "LISTEN_PID=4242", "LISTEN_FDNAMES="}, want: Listen{N: 0, Names: []string{}}},
		{desc: "no names", env: []string{"LISTEN_FDS=2", "LISTEN_PID=4242"},
			want: Listen{N: 2, Names: []string{"unknown", "unknown"}}},
		{desc: "empty name", env: []string{"LISTEN_FDS=1", "LISTEN_FDNAMES="}, want: Listen{N: 1, Names: []string{"unknown"}}},
		{desc: "empty names among others", env: []string{"LISTEN_FDS=4", "LISTEN_FDNAMES=a::c:"},
			want: Listen{N: 4, Names: []string{"a", "unknown", "c", "unknown"}}},
		{desc: "unrelated entries", env: []string{"garbage", "LISTEN_FDS_X=9", "LISTEN_FDS=1", "=x"}, want: Listen{N: 1, Names: []string{"unknown"}}},

		{desc: "another process's fds", env: []string{"LISTEN_FDS=1", "LISTEN_PID=4243"}, inErr: "LISTEN_PID=4243 is not this process (4242)"},
		{desc: "pid not a number", env: []string{"LISTEN_FDS=1", "LISTEN_PID=me"}, inErr: `LISTEN_PID="me": not a pid`},
		{desc: "pid zero", env: []string{"LISTEN_FDS=1", "LISTEN_PID=0"}, inErr: `LISTEN_PID="0": not a pid`},
		{desc: "count not a number", env: []string{"LISTEN_FDS=two"}, inErr: `LISTEN_FDS="two": not a count of fds`},
		{desc: "count empty", env: []string{"LISTEN_FDS="}, inErr: `LISTEN_FDS="": not a count of fds`},
		{desc: "count negative", env: []string{"LISTEN_FDS=-1"}, inErr: `LISTEN_FDS="-1": not a count of fds`},
		{desc: "count too big", env: []string{"LISTEN_FDS=65537"}, inErr: `LISTEN_FDS="65537": not a count of fds`},
		{desc: "fewer names than fds", env: []string{"LISTEN_FDS=2", "LISTEN_FDNAMES=a"}, inErr: "LISTEN_FDNAMES has 1 names for 2 fds"},
		{desc: "more names than fds", env: []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=a:b"}, inErr: "LISTEN_FDNAMES has 2 names for 1 fds"},
		// ':' separates names, so a name cannot hold one: it counts as two.
		{desc: "colon in a name", env: []string{"LISTEN_FDS=2", "LISTEN_FDNAMES=fw:maps/a:b"}, inErr: "LISTEN_FDNAMES has 3 names for 2 fds"},
		{desc: "bad byte in a name", env: []string{"LISTEN_FDS=1", "LISTEN_FDNAMES=a b"}, inErr: `LISTEN_FDNAMES: fd name "a b"`},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			got, err := Decode(tc.env, pid)
			switch {
			case tc.wantErr != nil:
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Decode = %+v, %v; want %v", got, err, tc.wantErr)
				}
			case tc.inErr != "":
				if err == nil || !strings.Contains(err.Error(), tc.inErr) {
					t.Fatalf("Decode = %+v, %v; want an error with %q", got, err, tc.inErr)
				}
			default:
				if err != nil || got.N != tc.want.N || !slices.Equal(got.Names, tc.want.Names) {
					t.Fatalf("Decode = %+v, %v; want %+v", got, err, tc.want)
				}
			}
		})
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	names := []string{"http", "fw/maps/counters", "fw/maps/drop_ports", "dns/programs/xdp-dns_1"}
	enc, err := EncodeNames(names)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode([]string{"LISTEN_FDS=4", "LISTEN_PID=7", EnvListenFDNames + "=" + enc}, 7)
	if err != nil || got.N != len(names) || !slices.Equal(got.Names, names) {
		t.Fatalf("Decode(EncodeNames(%q)) = %+v, %v", names, got, err)
	}
}
