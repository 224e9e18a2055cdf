package testutil

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Netns is a named network namespace created by MustNetns, as
// `ip netns add` makes them: a bind mount of the namespace at Path.
type Netns struct {
	// Name is the namespace's name for `ip netns` and `ip -n`:
	// "bpfsup-<prefix>-<8 hex digits>".
	Name string
	// Path is /run/netns/<Name>, what bpfsup's --netns and setns(2) take.
	Path string
}

// namePrefix is what MustNetns accepts as a prefix.
var namePrefix = regexp.MustCompile(`^[A-Za-z0-9_-]{0,32}$`)

// MustNetns creates a new, empty network namespace named
// "bpfsup-<prefix>-<random>" with its loopback interface up. prefix may be
// empty or up to 32 characters from [A-Za-z0-9_-]. Cleanup deletes the
// namespace, and with it every interface inside it; open sockets keep the
// namespace itself alive until they are closed.
func MustNetns(tb testing.TB, prefix string) *Netns {
	tb.Helper()
	if !namePrefix.MatchString(prefix) {
		tb.Fatalf("netns prefix %q: want up to 32 characters from [A-Za-z0-9_-]", prefix)
	}
	if prefix == "" {
		prefix = "ns"
	}
	name := "bpfsup-" + prefix + "-" + randomHex(4)
	ns := &Netns{Name: name, Path: filepath.Join("/run/netns", name)}

	// Registered first: `ip netns add` can fail after creating the mount point.
	tb.Cleanup(func() {
		if err := ns.delete(); err != nil {
			tb.Errorf("delete netns: %v", err)
		}
	})
	if _, err := ip("netns", "add", name); err != nil {
		tb.Fatalf("create netns: %v", err)
	}
	if _, err := ip("-n", name, "link", "set", "lo", "up"); err != nil {
		tb.Fatalf("netns %s: %v", name, err)
	}
	return ns
}

// Delete deletes the namespace (`ip netns del`): its path goes, and the
// namespace itself with its interfaces once nothing holds it any more.
func (ns *Netns) Delete(tb testing.TB) {
	tb.Helper()
	if err := ns.delete(); err != nil {
		tb.Fatalf("delete netns: %v", err)
	}
}

// Add makes a new, empty namespace at the path of ns, which must be gone
// (Delete): what `ip netns del NAME; ip netns add NAME` does. It is another
// namespace (another inode) under the same name and path.
func (ns *Netns) Add(tb testing.TB) {
	tb.Helper()
	if _, err := ip("netns", "add", ns.Name); err != nil {
		tb.Fatalf("create netns again: %v", err)
	}
	if _, err := ip("-n", ns.Name, "link", "set", "lo", "up"); err != nil {
		tb.Fatalf("netns %s: %v", ns.Name, err)
	}
}

// Inode is the namespace's inode, its identity (as `ip netns identify` and
// lsns show it).
func (ns *Netns) Inode(tb testing.TB) uint64 {
	tb.Helper()
	var st unix.Stat_t
	if err := unix.Stat(ns.Path, &st); err != nil {
		tb.Fatalf("netns %s: %v", ns.Name, err)
	}
	return st.Ino
}

// delete removes the namespace; it does nothing if it is already gone.
func (ns *Netns) delete() error {
	if !ns.exists() {
		return nil
	}
	if _, err := ip("netns", "del", ns.Name); err != nil {
		return err
	}
	if ns.exists() {
		return fmt.Errorf("netns %s: %s still exists after ip netns del", ns.Name, ns.Path)
	}
	return nil
}

func (ns *Netns) exists() bool {
	_, err := os.Lstat(ns.Path)
	return !errors.Is(err, fs.ErrNotExist)
}

// Run runs the command args inside the namespace with `ip netns exec` and
// returns its combined output; it fails the test if the command fails.
//
// The command also gets a private mount namespace with /sys remounted, so
// the host's bpffs is not visible to it (see DESIGN "Namespaces").
func (ns *Netns) Run(tb testing.TB, args ...string) string {
	tb.Helper()
	if len(args) == 0 {
		tb.Fatalf("netns %s: Run without a command", ns.Name)
	}
	out, err := ip(append([]string{"netns", "exec", ns.Name}, args...)...)
	if err != nil {
		tb.Fatalf("in netns %s: %v", ns.Name, err)
	}
	return out
}

// errGoexit is Do's result when fn ends its goroutine, as t.FailNow does.
var errGoexit = errors.New("function called runtime.Goexit (t.FailNow?) inside the namespace")

// Do runs fn on an OS thread switched into the namespace and returns fn's
// error. The calling goroutine and its thread stay where they are.
//
// Only the thread running fn is in the namespace: sockets fn creates belong
// to the namespace and stay in it for their whole life, wherever they are
// used later, but goroutines fn starts run elsewhere. fn must not call
// runtime.UnlockOSThread. If the thread cannot be switched back, it is
// discarded rather than returned to the scheduler.
func (ns *Netns) Do(fn func() error) error {
	target, err := os.Open(ns.Path)
	if err != nil {
		return fmt.Errorf("open netns: %w", err)
	}
	defer target.Close()

	result := make(chan error, 1)
	go func() {
		err := errGoexit
		defer func() { result <- err }()
		err = doInNetns(int(target.Fd()), ns.Name, fn)
	}()
	return <-result
}

// doInNetns runs fn with the current thread in the namespace target.
func doInNetns(target int, name string, fn func() error) error {
	runtime.LockOSThread()
	// Unlocked only once the thread is back home: a goroutine that exits
	// while locked takes its thread with it, which is what we want when the
	// thread is stuck in the wrong namespace.

	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current netns: %w", err)
	}
	defer orig.Close()

	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", name, err)
	}
	fnErr := fn()
	if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
		return errors.Join(fnErr, fmt.Errorf("leave netns %s: %w (thread discarded)", name, err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

// ip runs iproute2's ip and returns its combined output; the error carries
// the command line and the output.
func ip(args ...string) (string, error) {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}
