// Package skeleton holds end-to-end tests that run the real bpfsup binary against
// the real kernel, as root.
package skeleton

import (
	"os"
	"testing"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

func TestMain(m *testing.M) {
	// The test binary is also the application bpfsup supervises: started with
	// childModeEnv set, it plays the child and never runs a test.
	if mode := os.Getenv(childModeEnv); mode != "" {
		os.Exit(runChild(mode))
	}
	code := testutil.CheckNoFDLeaks(m)
	testutil.BuildCleanup()
	os.Exit(code)
}
