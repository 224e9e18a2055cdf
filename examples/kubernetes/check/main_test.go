package check

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

func TestMain(m *testing.M) {
	// podman as `make image` runs it (runc, ulimits within the machine's
	// limits, no network of podman's making), unless told otherwise.
	if os.Getenv("CONTAINERS_CONF") == "" {
		os.Setenv("CONTAINERS_CONF", filepath.Join(testutil.RepoRoot(), "scripts", "containers.conf"))
	}
	code := m.Run()
	testutil.BuildCleanup()
	os.Exit(code)
}
