package handoff

import (
	"os"
	"testing"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

func TestMain(m *testing.M) {
	os.Exit(testutil.CheckNoFDLeaks(m))
}
