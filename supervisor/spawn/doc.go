// Package spawn is the parent's side of the fd hand-off (package handoff):
// Start forks the application with the handed fds from 3 on, their names in
// LISTEN_FDNAMES, and the pin root in BPFSUP_PIN_ROOT, through an exec helper
// that sets LISTEN_PID to the child's own pid, changes user when asked, and
// execs the application in place.
//
// The helper is, by default, the native one that bpfsup carries (NativeHelper:
// a static program of a few kilobytes, executed from a sealed memfd) on
// x86-64; elsewhere, or where the kernel will not execute it, /bin/sh with a
// fixed script (ShellHelper); without a shell, bpfsup itself with ExecArg
// first (internal/exechelper). The fork runs on an OS thread that stays
// locked for the child's life, so that the child's parent-death signal fires
// when bpfsup dies and not before; Process.OnForkThread lets a re-exec of
// bpfsup run on that thread.
package spawn
