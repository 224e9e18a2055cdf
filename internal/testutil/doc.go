// Package testutil holds the helpers that bpfsup's tests share: root and
// bpffs checks, private pin roots and state directories, named network
// namespaces, veth pairs between them, UDP traffic, a file descriptor leak
// check for TestMain, and waiting for conditions and processes.
//
// Mechanism. Every MustX(tb, ...) helper calls tb.Helper, fails the test
// with tb.Fatalf when it cannot do what it says, and registers a tb.Cleanup
// that undoes everything it created, also when the test fails. Cleanups are
// idempotent: deleting a namespace also removes the veth ends in it, and the
// veth cleanup then has nothing left to do. Helpers never wait a fixed time:
// they poll a condition with a deadline (WaitFor).
//
// Everything a helper creates carries a recognisable, random name, so that
// leftovers of a test binary killed before its cleanups ran can be found and
// removed by hand:
//
//	ip netns list | grep '^bpfsup-'           # namespaces (MustNetns)
//	ls -d /sys/fs/bpf/bpfsup-test-*           # pin roots (MustPinRoot)
//	ls -d /tmp/bpfsup-state-*                 # state directories (MustStateDir)
//
// Isolation. Nothing here touches the host's own interfaces: veth pairs are
// created directly inside test namespaces, addresses are private (10.0.0.0/8)
// and traffic only flows between namespaces the test created.
//
// File descriptors. The package holds no fds of its own between calls. A
// UDPReceiver or UDPSender holds one socket until Stop or the end of the test;
// Netns.Do holds a namespace fd only while it runs. CheckNoFDLeaks verifies
// exactly this, on this package and on every package whose TestMain uses it.
//
// What survives a restart of the process: nothing, when cleanups ran. A
// bpffs mounted by MustBPFFS stays mounted on purpose, as bpfsup itself and
// systemd leave it.
package testutil
