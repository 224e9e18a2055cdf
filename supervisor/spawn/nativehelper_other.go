//go:build !amd64

package spawn

// There is no native exec helper for this architecture: the shell is the
// default helper.
var nativeImage []byte
