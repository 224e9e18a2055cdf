package supervisor

// convertNumber turns a number from TOML or a flag (int64, float64) into an
// unsigned integer of the variable's size, so that Variable.Set accepts it;
// other values pass through.
func convertNumber(v any, size uint32) any {
	var n uint64
	switch x := v.(type) {
	case int64:
		n = uint64(x)
	case int:
		n = uint64(x)
	case float64:
		n = uint64(int64(x))
	default:
		return v
	}
	switch size {
	case 1:
		return uint8(n)
	case 2:
		return uint16(n)
	case 4:
		return uint32(n)
	default:
		return n
	}
}
