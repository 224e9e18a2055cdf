// Command pause is the sandbox image's process for the kubelet tier of the
// tests (make k8s): no registry is reachable to pull registry.k8s.io/pause,
// so the test builds its own, FROM scratch. Like the real one it holds the
// pod's namespaces open, reaps the zombies it inherits as PID 1, and exits
// on SIGINT or SIGTERM.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
