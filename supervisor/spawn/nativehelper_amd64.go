package spawn

import _ "embed"

//go:embed nativehelper/helper_amd64.bin
var nativeImage []byte
