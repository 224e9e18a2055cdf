package pinstore

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/bpfsup/bpfsup/internal/testutil"
)

// The test binary is also the "other process" of the tests that need one:
// started with helperEnv set, TestMain runs that helper instead of the tests.
const (
	helperEnv       = "BPFSUP_PINSTORE_TEST_HELPER"
	helperRootEnv   = "BPFSUP_PINSTORE_TEST_ROOT"
	helperStateEnv  = "BPFSUP_PINSTORE_TEST_STATE"
	helperObjectEnv = "BPFSUP_PINSTORE_TEST_OBJECT"
	helperAnyFSEnv  = "BPFSUP_PINSTORE_TEST_ANYFS"
)

func TestMain(m *testing.M) {
	if h := os.Getenv(helperEnv); h != "" {
		os.Exit(runHelper(h))
	}
	os.Exit(testutil.CheckNoFDLeaks(m))
}

// runHelper is the life of a helper process. It reports on stdout, one
// "key=value" line per fact, and exits 0 when it could do its job.
func runHelper(name string) int {
	store := Store{Root: os.Getenv(helperRootEnv), StateDir: os.Getenv(helperStateEnv), anyFS: os.Getenv(helperAnyFSEnv) != ""}
	object := os.Getenv(helperObjectEnv)
	switch name {
	case "lock-hold":
		// Take the object's lock and keep it until killed.
		o, err := store.Open(object)
		if err != nil {
			fmt.Printf("error=%v\n", err)
			return 1
		}
		defer o.Close()
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM)
		fmt.Printf("locked pid=%d\n", os.Getpid())
		<-sig
		return 0
	case "lock-try":
		o, err := store.Open(object)
		if err == nil {
			o.Close()
		}
		fmt.Printf("pid=%d\nlocked=%v\nerror=%v\n", os.Getpid(), errors.Is(err, ErrLocked), err)
		return 0
	case "pin-crash":
		// Pin a map with a crash point armed (BPFSUP_TEST_CRASH_AT) that
		// kills this process between staging and the move into place.
		o, err := store.Open(object)
		if err != nil {
			fmt.Printf("error=%v\n", err)
			return 1
		}
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
		if err != nil {
			fmt.Printf("error=%v\n", err)
			return 1
		}
		// Write-ahead, as the supervisor does: the manifest names the map
		// before it is pinned.
		id, err := MapID(m)
		if err == nil {
			err = o.WriteManifest(&Manifest{Maps: map[string]MapRecord{"crashed": {ID: uint32(id), Path: o.Path(Maps, "crashed"), Made: true}}})
		}
		if err != nil {
			fmt.Printf("error=%v\n", err)
			return 1
		}
		err = o.Pin(Maps, o.Path(Maps, "crashed"), m)
		fmt.Printf("survived error=%v\n", err)
		return 1
	case "lock-fork-die":
		// Take the object's locks, then start a child that holds copies of
		// their fds (as a child does between its fork and its exec) for a
		// moment, and wait to be killed: the child outlives this process.
		o, err := store.Open(object)
		if err != nil {
			fmt.Printf("error=%v\n", err)
			return 1
		}
		child := exec.Command("sleep", os.Getenv("BPFSUP_PINSTORE_TEST_SLEEP"))
		child.ExtraFiles = []*os.File{o.lock, o.pinLock}
		if err := child.Start(); err != nil {
			fmt.Printf("error=%v\n", err)
			return 1
		}
		fmt.Printf("locked pid=%d child=%d\n", os.Getpid(), child.Process.Pid)
		select {}
	case "ensure-bpffs":
		host, err := InHostMountNS()
		fmt.Printf("host_mount_ns=%v err=%v\n", host, err)
		mounted, err := EnsureBPFFS(store.Root)
		fmt.Printf("mounted=%v\nforeign=%v\nerror=%v\n", mounted, errors.Is(err, ErrForeignMountNS), err)
		still, _ := IsBPFFS(DefaultBPFFS)
		fmt.Printf("bpffs_after=%v\n", still)
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown helper %q\n", name)
	return 2
}

// helperCmd is a command that runs the test binary as helper name on store
// and object; prefix, if any, is the command line the binary runs under
// (e.g. ip netns exec NAME).
func helperCmd(tb testing.TB, name string, store Store, object string, prefix ...string) *exec.Cmd {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	args := append(prefix, exe, "-test.run=^$")
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(),
		helperEnv+"="+name,
		helperRootEnv+"="+store.Root,
		helperStateEnv+"="+store.StateDir,
		helperObjectEnv+"="+object,
	)
	if store.anyFS {
		cmd.Env = append(cmd.Env, helperAnyFSEnv+"=1")
	}
	return cmd
}
