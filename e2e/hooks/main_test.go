// Package hookstest holds end-to-end tests of bpfsup's hooks: the real bpfsup
// binary against the real kernel, as root. Events come from hookshelper, a
// small program built once per test binary.
package hookstest

import (
	"os"
	"testing"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

func TestMain(m *testing.M) {
	code := testutil.CheckNoFDLeaks(m)
	testutil.BuildCleanup()
	removeHelper()
	os.Exit(code)
}
