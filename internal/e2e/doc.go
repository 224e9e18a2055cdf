// Package e2e holds the helpers that the end-to-end tests under e2e/ share:
// reading `bpfsup status --json` into the status package's types, running
// bpfsup subcommands that must succeed, reading what bpfsup logged (install
// counts, the pids its children announced), reading the kernel's view of
// what bpfsup pinned and attached (link, program and map ids, the XDP
// program `ip link` shows), and the files the tests write (configurations,
// object files swapped in place).
//
// It sits beside internal/testutil, not inside it, because it imports
// status and hooks, and the in-package tests of hooks and of pinstore
// (which status imports) import testutil: in testutil these helpers would
// make an import cycle. What has nothing to do with bpfsup (namespaces, veth
// pairs, traffic, waiting, /proc) stays in testutil, which this package
// builds on. Helpers that only one e2e package needs stay in that package.
//
// Mechanism. Every helper that takes a testing.TB calls tb.Helper and fails
// the test with tb.Fatalf when it cannot do what it says; helpers that
// report a condition (LinkGone, PinnedAttachmentInfo) return it instead, for
// use inside testutil.WaitFor. Helpers never wait a fixed time: they poll a
// condition with a deadline.
//
// File descriptors. A helper closes every fd it opens (of a pin, of a
// kernel object by id) before it returns: the package holds none between
// calls, and the e2e packages' TestMain leak checks see none of it.
//
// What survives a restart of the process: nothing; the files it writes are
// in the test's temporary directories, removed with them.
package e2e
