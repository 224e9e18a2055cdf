package config

import (
	"strings"
	"testing"
)

// A number a variable cannot hold is an error, never truncated.
func TestVariableValue(t *testing.T) {
	for _, tc := range []struct {
		v      any
		size   uint32
		signed bool
		want   any
		err    string
	}{
		{int64(7), 4, false, uint32(7), ""},
		{int64(255), 1, false, uint8(255), ""},
		{int64(256), 1, false, nil, "out of the range of an unsigned 8-bit variable (0 to 255)"},
		{int64(-1), 4, false, nil, "out of the range of an unsigned 32-bit variable"},
		{int64(-128), 1, true, int8(-128), ""},
		{int64(128), 1, true, nil, "out of the range of a signed 8-bit variable (-128 to 127)"},
		{int64(1 << 40), 4, true, nil, "signed 32-bit"},
		{int64(-5), 8, true, int64(-5), ""},
		{int64(1 << 62), 8, false, uint64(1 << 62), ""},
		{float64(3), 2, false, uint16(3), ""},
		{float64(3.5), 2, false, nil, "not a whole number"},
		{true, 1, false, true, ""},
		{"text", 4, false, "text", ""},
	} {
		got, err := VariableValue(tc.v, tc.size, tc.signed)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("VariableValue(%v, %d, %v) = %v, %v; want an error with %q", tc.v, tc.size, tc.signed, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("VariableValue(%v, %d, %v) = %#v, %v; want %#v", tc.v, tc.size, tc.signed, got, err, tc.want)
		}
	}
}
