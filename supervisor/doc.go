// Package supervisor is bpfsup's process supervision: it has the configured
// BPF objects installed (package converge, which adopts what is pinned),
// starts the application with their fds (package spawn), restarts it by
// policy, forwards signals, stops it, speaks sd_notify, serves metrics and a
// control socket, reloads (upgrades) objects on request as converge
// transactions, and re-executes itself. What it does to pins and links goes
// through converge; of hooks it knows only what its watchers wait for (an
// interface, a cgroup, a network namespace coming back).
//
// One goroutine owns all state and loops over a select (Run); the other
// actors of its run.Group (signals, control socket, notify socket, metrics
// server, file watcher, interface watcher) only send it requests.
//
// File descriptors held for the life of a run: every map, program and link of
// every object, the lock of every object, one duplicate per fd handed to the
// child, the control socket, the notify socket when --notify=child, and one
// rtnetlink socket per network namespace of the network hooks (to re-attach
// defunct links when their interface is back, see ifaces.go), and, with
// program_stats, a BPF_ENABLE_STATS fd: the kernel counts programs' run
// time while it is open, and closes it with bpfsup however bpfsup dies
// (stats.go; it is not handed across a re-exec, which opens its own).
//
// What survives a restart of the process: the pins and the manifests, so the
// next run adopts everything without reloading; the child does not (it dies
// with bpfsup by its parent-death signal). A self-upgrade (SIGUSR2, see
// reexec.go) is no restart: the pid, the child, the object locks and the
// listening sockets (control, notify, metrics; see internal/quiesce) survive the
// exec.
package supervisor
