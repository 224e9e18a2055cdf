// Package order holds end-to-end tests of bpfsup's order on shared hooks
// (tcx, netkit): foreign programs beside bpfsup's, two supervisors on one
// hook, restarts, upgrades and re-attachments, with traffic counted.
package order

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
