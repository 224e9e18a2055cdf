package hooks

import (
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netns"
)

// inNetns runs fn on an OS thread switched into the network namespace at path
// (or on the current one when path is empty). A thread that cannot switch back
// is left locked, so the Go runtime discards it instead of reusing it.
func inNetns(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current network namespace: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromPath(path)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open network namespace %s: %w", path, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter network namespace %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Stay locked: the runtime ends this thread with the goroutine.
			errc <- fmt.Errorf("leave network namespace %s: %w", path, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// ifindex resolves an interface name in the namespace at netnsPath.
func ifindex(netnsPath, name string) (int, error) {
	var idx int
	err := inNetns(netnsPath, func() (err error) {
		idx, err = ifindexHere(netnsPath, name)
		return err
	})
	return idx, err
}

// ifindexHere resolves an interface name in the network namespace of the
// calling thread, which inNetns has switched to netnsPath; the path only
// names that namespace in the error.
func ifindexHere(netnsPath, name string) (int, error) {
	iface, err := net.InterfaceByName(name)
	if err != nil {
		where := "this network namespace"
		if netnsPath != "" {
			where = "network namespace " + netnsPath
		}
		return 0, fmt.Errorf("interface %q in %s: %w", name, where, ErrTargetNotFound)
	}
	return iface.Index, nil
}
