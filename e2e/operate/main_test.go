// Package operate holds end-to-end tests of what operating bpfsup needs
// beside running it: the programs' run statistics, the preflight check,
// and objects verified before they load. They run the real bpfsup binary
// against the real kernel, as root.
package operate

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
