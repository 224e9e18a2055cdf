// Package kernels holds end-to-end tests of what differs between kernels:
// the fallbacks bpfsup takes where a kernel lacks a feature. `make kernels`
// runs them (with everything else) on Debian's 6.1 and 6.12 in VMs; on the
// host they run too, through the hooks every kernel has.
package kernels

import (
	"os"
	"testing"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

func TestMain(m *testing.M) {
	code := testutil.CheckNoFDLeaks(m)
	testutil.BuildCleanup()
	os.Exit(code)
}
