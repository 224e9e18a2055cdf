// Package crashtest holds end-to-end tests of bpfsup's crash safety: the real
// bpfsup binary, killed at every step of its work and at random moments,
// against the real kernel, as root. (Not named crash: it imports
// internal/crash for the list of crash points.)
package crashtest

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
