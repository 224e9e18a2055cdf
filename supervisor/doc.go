// Package supervisor is bpfsup's run loop: it installs the configured BPF
// objects (adopting what is pinned, see install), starts the application with
// their fds, restarts it by policy, forwards signals, stops it, speaks
// sd_notify, serves metrics and a control socket, and reloads (upgrades)
// objects on request.
//
// One goroutine owns all state and loops over a select (Run); the other
// actors of its run.Group (signals, control socket, notify socket, metrics
// server, file watcher, interface watcher) only send it requests.
//
// File descriptors held for the life of a run: every map, program and link of
// every object, the lock of every object, one duplicate per fd handed to the
// child, the control socket, the notify socket when --notify=child, and one
// rtnetlink socket per network namespace of the network hooks (to re-attach
// defunct links when their interface is back, see netlink.go).
//
// What survives a restart of the process: the pins and the manifests, so the
// next run adopts everything without reloading; the child does not (it dies
// with bpfsup by its parent-death signal). A self-upgrade (SIGUSR2, see
// reexec.go) is no restart: the pid, the child, the object locks and the
// listening sockets (control, notify, metrics; see handover.go) survive the
// exec.
package supervisor
