// Package vmplan is what the host (kernels/cmd/vmtest) tells the VM's /init
// (kernels/init): the test binaries to run and how, and the markers /init
// prints on the console for the host to read back.
package vmplan

import (
	"encoding/json"
	"fmt"
	"os"
)

// Path is where the plan lives in the initramfs.
const Path = "/vmtest/plan.json"

// Markers /init prints on the console, each at the start of its own line.
const (
	// MarkStart PKG: the test binary of PKG starts.
	MarkStart = "VMTEST-START"
	// MarkEnd PKG exit=N seconds=S leaks=N: it ended with exit status N
	// (-1: killed after the deadline) and left N things behind.
	MarkEnd = "VMTEST-END"
	// MarkLeak PKG WHAT: a package left a namespace, pin or process behind.
	MarkLeak = "VMTEST-LEAK"
	// MarkError MSG: /init could not prepare the machine.
	MarkError = "VMTEST-ERROR"
	// MarkDone: every package ran; the VM powers off next.
	MarkDone = "VMTEST-DONE"
)

// Plan is one VM run.
type Plan struct {
	// Kernel is the kernel's label in the result table, e.g. "6.1".
	Kernel string `json:"kernel"`
	// Env is added to the test binaries' environment (KEY=VALUE).
	Env []string `json:"env"`
	// Modules are kernel module files (uncompressed), in load order:
	// dependencies first.
	Modules []string `json:"modules"`
	// Packages are run one after the other, in order.
	Packages []Package `json:"packages"`
}

// Package is one test binary.
type Package struct {
	// Name is the package's import path relative to the module, e.g.
	// "e2e/crash"; it names the package in markers and the table.
	Name string `json:"name"`
	// Bin is the test binary's path in the initramfs.
	Bin string `json:"bin"`
	// Dir is the working directory: the package's directory, as `go test`
	// runs a test binary there.
	Dir string `json:"dir"`
	// Args are the test binary's arguments (-test.v ...).
	Args []string `json:"args"`
	// TimeoutSeconds is how long /init lets the binary run before it kills
	// it; the binary's own -test.timeout should fire first, with stacks.
	TimeoutSeconds int `json:"timeout_seconds"`
}

// Read reads the plan at path.
func Read(path string) (*Plan, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read plan: %w", err)
	}
	var p Plan
	if err := json.Unmarshal(data, &p); err != nil {
		return nil, fmt.Errorf("parse plan %s: %w", path, err)
	}
	return &p, nil
}
