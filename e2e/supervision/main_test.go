// Package supervision holds end-to-end tests that run the real bpfsup binary against
// the real kernel, as root.
package supervision

import (
	"os"
	"testing"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

func TestMain(m *testing.M) {
	// Started by bpfsup as its child application: see child_test.go.
	if behaviour := os.Getenv(envChild); behaviour != "" {
		os.Exit(runChild(behaviour))
	}
	code := testutil.CheckNoFDLeaks(m)
	testutil.BuildCleanup()
	os.Exit(code)
}
