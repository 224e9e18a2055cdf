// Command bpfsup is a supervisor for crash-safe BPF programs: it loads BPF
// objects, pins their maps, programs and links in a predictable layout,
// attaches them, and runs an application with their fds; when the application
// or bpfsup itself crashes, nothing is detached. See the README.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/bpfsup/bpfsup/supervisor/spawn"
)

func main() {
	// The exec helper must run before anything else opens an fd: it hands
	// fds 3 and up to the application untouched.
	if len(os.Args) > 1 && os.Args[1] == spawn.ExecArg {
		spawn.ExecHelper(os.Args[2:])
	}
	code, err := execute(os.Args[1:])
	if err != nil {
		if !errors.As(err, new(loggedError)) {
			fmt.Fprintf(os.Stderr, "bpfsup: %v\n", err)
		}
		var ue usageError
		if errors.As(err, &ue) && code == 0 {
			code = 2
		} else if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}
