package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// PrebuiltName is the file name a main package's binary has in
// $BPFSUP_TEST_PREBUILT: its path in the repository with '/' as '_'
// ("./e2e/hooks/hookshelper" -> "e2e_hooks_hookshelper").
func PrebuiltName(pkg string) string {
	return strings.ReplaceAll(strings.Trim(filepath.Clean(pkg), "./"), "/", "_")
}

// GoBuild builds the main package pkg ("./examples/xdp-counter", relative to
// the repository) into the file out, as `go build -o out pkg` run in the
// repository does, and returns what the build printed. Where there is no Go
// toolchain (the VMs of `make kernels`), $BPFSUP_TEST_PREBUILT names a
// directory of binaries built beforehand (see PrebuiltName), and GoBuild
// copies pkg's to out instead.
func GoBuild(pkg, out string) ([]byte, error) {
	if dir := os.Getenv("BPFSUP_TEST_PREBUILT"); dir != "" {
		data, err := os.ReadFile(filepath.Join(dir, PrebuiltName(pkg)))
		if err != nil {
			return nil, fmt.Errorf("prebuilt %s: %w", pkg, err)
		}
		return nil, os.WriteFile(out, data, 0o755)
	}
	return goBuild("-o", out, pkg).CombinedOutput()
}

// goBuild is `go build args...` in the repository, without cgo as `make
// build` (and the VMs' builds) do.
func goBuild(args ...string) *exec.Cmd {
	cmd := exec.Command("go", append([]string{"build"}, args...)...)
	cmd.Dir = RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	return cmd
}

// BpfsupVersions are the versions of bpfsup that tests of its self-upgrade
// build (GoBuildBpfsup), and that the VMs of `make kernels` carry prebuilt.
var BpfsupVersions = []string{"upgrade-v1", "upgrade-v2"}

// PrebuiltBpfsupName is the file name of bpfsup built as version in
// $BPFSUP_TEST_PREBUILT.
func PrebuiltBpfsupName(version string) string {
	return PrebuiltName("cmd/bpfsup") + "-" + version
}

// GoBuildBpfsup builds bpfsup saying it is version into the file out, or
// copies the prebuilt one where there is no Go toolchain (see GoBuild).
func GoBuildBpfsup(version, out string) ([]byte, error) {
	if dir := os.Getenv("BPFSUP_TEST_PREBUILT"); dir != "" {
		data, err := os.ReadFile(filepath.Join(dir, PrebuiltBpfsupName(version)))
		if err != nil {
			return nil, fmt.Errorf("prebuilt bpfsup %s: %w", version, err)
		}
		return nil, os.WriteFile(out, data, 0o755)
	}
	return goBuild("-ldflags", "-X main.version="+version, "-o", out, "./cmd/bpfsup").CombinedOutput()
}
