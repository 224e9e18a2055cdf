// Package upgrade holds end-to-end tests that run the real bpfsup binary against
// the real kernel, as root.
package upgrade

import (
	"os"
	"testing"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

func TestMain(m *testing.M) {
	// Started by bpfsup as its child: be the application, not the tests.
	if os.Getenv(childEnv) != "" {
		childMain()
		return
	}
	code := testutil.CheckNoFDLeaks(m)
	testutil.BuildCleanup()
	os.Exit(code)
}
