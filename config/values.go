package config

import (
	"fmt"
	"math"
)

// VariableValue turns a number from TOML or a flag (int64, float64) into an
// integer of a global variable's size, signed or not as the variable is, so
// that cilium/ebpf's VariableSpec.Set takes it. A number the variable cannot
// hold (out of its range, or not a whole number) is an error that says its
// range: never a silent truncation. Values that are not numbers pass
// through, for Set to judge.
func VariableValue(v any, size uint32, signed bool) (any, error) {
	var (
		n     int64
		isInt = true
	)
	switch x := v.(type) {
	case int64:
		n = x
	case int:
		n = int64(x)
	case float64:
		if x != math.Trunc(x) || x < math.MinInt64 || x >= math.MaxInt64 {
			return nil, fmt.Errorf("%v is not a whole number a variable of %d bytes can hold", x, size)
		}
		n = int64(x)
	default:
		isInt = false
	}
	if !isInt {
		return v, nil
	}
	bits := size * 8
	if size == 0 || size > 8 {
		return nil, fmt.Errorf("a variable of %d bytes does not take a number", size)
	}
	if signed {
		lo, hi := int64(math.MinInt64), int64(math.MaxInt64)
		if bits < 64 {
			lo, hi = -(1 << (bits - 1)), 1<<(bits-1)-1
		}
		if n < lo || n > hi {
			return nil, fmt.Errorf("%d is out of the range of a signed %d-bit variable (%d to %d)", n, bits, lo, hi)
		}
		switch size {
		case 1:
			return int8(n), nil
		case 2:
			return int16(n), nil
		case 4:
			return int32(n), nil
		}
		return n, nil
	}
	if n < 0 || (bits < 64 && uint64(n) > 1<<bits-1) {
		return nil, fmt.Errorf("%d is out of the range of an unsigned %d-bit variable (0 to %d)", n, bits, uint64(1)<<bits-1)
	}
	switch size {
	case 1:
		return uint8(n), nil
	case 2:
		return uint16(n), nil
	case 4:
		return uint32(n), nil
	}
	return uint64(n), nil
}
