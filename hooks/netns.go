package hooks

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// InNetns runs fn on an OS thread switched into the network namespace at path
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

// NetnsInode is the inode of the network namespace at path (this process's
// own when path is empty): the namespace's identity, which `ip netns
// identify` and lsns show too. A namespace deleted and made again at a path
// is another inode.
func NetnsInode(path string) (uint64, error) {
	if path == "" {
		path = "/proc/self/ns/net"
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("network namespace %s: %w", path, err)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return 0, fmt.Errorf("network namespace %s: %w", path, err)
	}
	if fs.Type != unix.NSFS_MAGIC {
		return 0, fmt.Errorf("network namespace %s: not a namespace (nothing mounted there): %w", path, ErrTargetNotFound)
	}
	return st.Ino, nil
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
		if errors.Is(err, unix.ENODEV) {
			return 0, fmt.Errorf("interface %q in %s: %w", name, where, ErrTargetNotFound)
		}
		// Another cause (EMFILE, say) is said as it is: the interface
		// may well be there.
		return 0, fmt.Errorf("interface %q in %s: look it up: %w", name, where, err)
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

// ifaceFacts is what a check needs of an interface: its index and the XDP
// programs on it, one per mode (an interface may run a generic and a native
// program at once).
type ifaceFacts struct {
	index                    int
	skbProg, drvProg, hwProg uint32
}

// runsXDP says whether the interface runs prog in the XDP mode of variant:
// "generic", "native", or "" for whichever the kernel chose.
func (f ifaceFacts) runsXDP(prog uint32, variant string) bool {
	switch variant {
	case "generic":
		return f.skbProg == prog
	case "native":
		return f.drvProg == prog
	}
	return f.skbProg == prog || f.drvProg == prog || f.hwProg == prog
}

// batch holds, while a Batch is open, one rtnetlink socket per network
// namespace that a check looked into: checking a link then costs one
// request on it, where on its own it costs a switch into the namespace and
// back and a new socket (about 0.2 ms: a supervisor of 100 XDP programs
// spent 24 ms of its start there).
var batch struct {
	sync.Mutex
	open    int // Batch calls not yet done: batches nest
	sockets map[string]*rtnl
}

// Batch makes checks (Hook.Check) share one rtnetlink socket per network
// namespace until the returned function is called, for a reconcile of many
// links at once. Every check still asks the kernel: nothing is cached.
// Batches nest: the sockets are closed when the outermost one is done.
func Batch() (done func()) {
	batch.Lock()
	batch.open++
	batch.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			batch.Lock()
			defer batch.Unlock()
			if batch.open--; batch.open > 0 {
				return
			}
			for _, s := range batch.sockets {
				s.close()
			}
			batch.sockets = nil
		})
	}
}

// getLink asks for the interface name (RTM_GETLINK, without statistics)
// and returns its ifindex; fn reads its attributes, which live in the
// socket's buffer only until the next read.
func (r *rtnl) getLink(name string, fn func(nlAttrs)) (ifindex int, err error) {
	ifi := make([]byte, unix.SizeofIfInfomsg)
	ifi[0] = unix.AF_UNSPEC
	payload := append(ifi, attrU32(unix.IFLA_EXT_MASK, rtextFilterSkipStats)...)
	payload = append(payload, attrString(unix.IFLA_IFNAME, name)...)
	found := false
	err = r.request(unix.RTM_GETLINK, 0, payload, unix.RTM_NEWLINK, func(msg []byte) {
		if len(msg) < unix.SizeofIfInfomsg {
			return
		}
		found = true
		ifindex = int(int32(binary.NativeEndian.Uint32(msg[4:])))
		fn(nlAttrs(msg[unix.SizeofIfInfomsg:]))
	})
	if err == nil && !found {
		err = errors.New("no answer to RTM_GETLINK")
	}
	return ifindex, err
}

// rtextFilterSkipStats is RTEXT_FILTER_SKIP_STATS of <linux/rtnetlink.h>:
// the answer leaves out the interface's statistics, most of its size.
const rtextFilterSkipStats = 1 << 3

// ifaceByName asks the kernel for the interface name in the network
// namespace at netnsPath: its ifindex and XDP programs, on the open Batch's
// socket for the namespace when there is one.
func ifaceByName(netnsPath, name string) (ifaceFacts, error) {
	batch.Lock()
	defer batch.Unlock()
	sock := batch.sockets[netnsPath]
	if sock == nil {
		err := InNetns(netnsPath, func() (err error) {
			sock, err = openRtnl()
			return err
		})
		if err != nil {
			return ifaceFacts{}, err
		}
		if batch.open > 0 {
			if batch.sockets == nil {
				batch.sockets = map[string]*rtnl{}
			}
			batch.sockets[netnsPath] = sock
		} else {
			defer sock.close()
		}
	}
	var facts ifaceFacts
	idx, err := sock.getLink(name, func(attrs nlAttrs) {
		xdp := nlAttrs(attrs.get(unix.IFLA_XDP))
		for _, a := range []struct {
			typ uint16
			id  *uint32
		}{{unix.IFLA_XDP_SKB_PROG_ID, &facts.skbProg}, {unix.IFLA_XDP_DRV_PROG_ID, &facts.drvProg}, {unix.IFLA_XDP_HW_PROG_ID, &facts.hwProg}} {
			if v := xdp.get(a.typ); len(v) >= 4 {
				*a.id = binary.NativeEndian.Uint32(v)
			}
		}
	})
	if errors.Is(err, unix.ENODEV) {
		return ifaceFacts{}, fmt.Errorf("interface %q: %w", name, ErrTargetNotFound)
	}
	if err != nil {
		return ifaceFacts{}, fmt.Errorf("interface %q: %w", name, err)
	}
	facts.index = idx
	return facts, nil
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
