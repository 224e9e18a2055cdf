package testutil

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
)

func TestMustNetns(t *testing.T) {
	RequireRoot(t)
	var ns *Netns
	t.Run("use", func(t *testing.T) {
		ns = MustNetns(t, "nstest")
		if !strings.HasPrefix(ns.Name, "bpfsup-nstest-") || ns.Path != "/run/netns/"+ns.Name {
			t.Fatalf("netns %+v", ns)
		}
		if !strings.Contains(ipOut(t, "netns", "list"), ns.Name) {
			t.Fatalf("ip netns list does not show %s", ns.Name)
		}
		if other := MustNetns(t, "nstest"); other.Name == ns.Name {
			t.Fatalf("two namespaces named %s", ns.Name)
		}

		// A fresh namespace has only lo, and MustNetns brought it up.
		links := strings.TrimSpace(ns.Run(t, "ip", "-o", "link", "show"))
		if strings.Count(links, "\n") != 0 || !strings.Contains(links, ": lo: <LOOPBACK,UP") {
			t.Fatalf("links in new netns:\n%s", links)
		}
	})
	if _, err := os.Lstat(ns.Path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s left behind (lstat: %v)", ns.Path, err)
	}
	if strings.Contains(ipOut(t, "netns", "list"), ns.Name) {
		t.Errorf("ip netns list still shows %s", ns.Name)
	}
}

func TestNetnsRunFails(t *testing.T) {
	RequireRoot(t)
	ns := MustNetns(t, "run")
	f := runFake(t, func(tb testing.TB) {
		ns.Run(tb, "false")
	})
	wantFailure(t, f, "ip netns exec "+ns.Name+" false")
}

func TestNetnsDo(t *testing.T) {
	RequireRoot(t)
	ns := MustNetns(t, "do")

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	home := threadNetns(t)

	var inside string
	var ifaces []net.Interface
	err := ns.Do(func() (err error) {
		if inside, err = os.Readlink("/proc/thread-self/ns/net"); err != nil {
			return err
		}
		ifaces, err = net.Interfaces()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if inside == home {
		t.Fatalf("Do ran in the caller's netns %s", home)
	}
	if len(ifaces) != 1 || ifaces[0].Name != "lo" {
		t.Fatalf("interfaces inside: %v, want lo only", ifaces)
	}
	if now := threadNetns(t); now != home {
		t.Fatalf("caller's thread moved from %s to %s", home, now)
	}

	// Do enters the same namespace each time, and returns fn's error.
	errSentinel := errors.New("sentinel")
	var again string
	err = ns.Do(func() (err error) {
		again, _ = os.Readlink("/proc/thread-self/ns/net")
		return errSentinel
	})
	if !errors.Is(err, errSentinel) {
		t.Fatalf("Do returned %v, want fn's error", err)
	}
	if again != inside {
		t.Fatalf("second Do ran in %s, first in %s", again, inside)
	}

	// A fn that ends its goroutine does not hang Do.
	if err := ns.Do(func() error { runtime.Goexit(); return nil }); !errors.Is(err, errGoexit) {
		t.Fatalf("Do with Goexit returned %v", err)
	}
}

// The namespace may be gone before Cleanup, which then has nothing to do.
func TestNetnsCleanupIdempotent(t *testing.T) {
	RequireRoot(t)
	ns := MustNetns(t, "gone")
	ipOut(t, "netns", "del", ns.Name)
	if err := ns.Do(func() error { return nil }); err == nil {
		t.Fatal("Do in a deleted namespace succeeded")
	}
}

// Cleanups undo everything also when the test fails half way.
func TestCleanupAfterFailure(t *testing.T) {
	RequireRoot(t)
	var a, b *Netns
	var pinRoot, stateDir string
	f := runFake(t, func(tb testing.TB) {
		a, b = MustNetns(tb, "fail"), MustNetns(tb, "fail")
		MustVethPair(tb, a, b)
		StartUDPReceiver(tb, b, 0)
		pinRoot, stateDir = MustPinRoot(tb), MustStateDir(tb)
		tb.Fatalf("the test fails")
	})
	wantFailure(t, f, "the test fails")
	for _, path := range []string{a.Path, b.Path, pinRoot, stateDir} {
		if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s left behind (lstat: %v)", path, err)
		}
	}
}

// threadNetns names the network namespace of the calling thread.
func threadNetns(t *testing.T) string {
	t.Helper()
	link, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return link
}

// ipOut runs ip and fails t on error.
func ipOut(t *testing.T, args ...string) string {
	t.Helper()
	out, err := ip(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestMustNetnsBadPrefix(t *testing.T) {
	for _, prefix := range []string{"a.b", "a/b", "x y", strings.Repeat("p", 33)} {
		f := runFake(t, func(tb testing.TB) { MustNetns(tb, prefix) })
		wantFailure(t, f, "netns prefix")
	}
}
