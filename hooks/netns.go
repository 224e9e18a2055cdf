package hooks

import (
	"fmt"
	"runtime"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// inNetns runs fn on an OS thread switched into the network namespace at path
// (or on the current one when path is empty). A thread that cannot switch back
// is left locked, so the Go runtime discards it instead of reusing it.
func InNetns(path string, fn func() error) error {
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
	err := InNetns(netnsPath, func() (err error) {
		idx, err = ifindexHere(netnsPath, name)
		return err
	})
	return idx, err
}

// ifindexHere resolves an interface name in the network namespace of the
// calling thread, which inNetns has switched to netnsPath; the path only
// names that namespace in the error.
func ifindexHere(netnsPath, name string) (int, error) {
	// SIOCGIFINDEX asks for one interface; net.InterfaceByName lists them
	// all, which costs milliseconds per lookup on a host with hundreds.
	idx, err := ifindexIoctl(name)
	if err != nil {
		where := "this network namespace"
		if netnsPath != "" {
			where = "network namespace " + netnsPath
		}
		return 0, fmt.Errorf("interface %q in %s: %w", name, where, ErrTargetNotFound)
	}
	return idx, nil
}

// ifindexIoctl resolves name with SIOCGIFINDEX on a socket of the calling
// thread's network namespace.
func ifindexIoctl(name string) (int, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, err
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, err
	}
	return int(ifr.Uint32()), nil
}

// xdpProgramOn returns the ifindex of the interface name in the network
// namespace at netnsPath and the id of the XDP program attached to it (0 when
// none), from one netlink request.
func xdpProgramOn(netnsPath, name string) (ifindex int, prog uint32, err error) {
	err = InNetns(netnsPath, func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return fmt.Errorf("interface %q: %w", name, err)
		}
		ifindex = l.Attrs().Index
		if xdp := l.Attrs().Xdp; xdp != nil && xdp.Attached {
			prog = xdp.ProgId
		}
		return nil
	})
	return ifindex, prog, err
}

// tcxLinksOn returns the ids of the links attached to the interface with
// ifindex in the network namespace at netnsPath, for one tcx direction.
func tcxLinksOn(netnsPath string, ifindex int, attach ebpf.AttachType) ([]link.ID, error) {
	var ids []link.ID
	err := InNetns(netnsPath, func() error {
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: attach})
		if err != nil {
			return err
		}
		for _, p := range res.Programs {
			if id, ok := p.LinkID(); ok {
				ids = append(ids, id)
			}
		}
		return nil
	})
	return ids, err
}
