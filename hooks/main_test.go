package hooks

import (
	"os"
	"testing"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// Every link, program and namespace fd a test opens must be closed by the
// time it ends: a hook that leaks a link fd keeps a program attached.
func TestMain(m *testing.M) {
	os.Exit(testutil.CheckNoFDLeaks(m))
}
