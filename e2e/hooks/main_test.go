// Package hooks holds end-to-end tests that run the real bpfsup binary against
// the real kernel, as root.
package hooks

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
