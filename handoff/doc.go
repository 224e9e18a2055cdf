// Package handoff is the child's side of the protocol by which bpfsup hands
// BPF objects to the application it supervises. Every Go child imports it, so
// it stays small: nothing of bpfsup, no os/exec, no init (imports_test.go).
// The parent's side is package supervisor/spawn.
//
// The protocol is systemd's socket activation (sd_listen_fds(3)): the child's
// fds from 3 on are the handed objects, LISTEN_FDS counts them, LISTEN_PID is
// the child's own pid and LISTEN_FDNAMES names them, colon-separated. Fds that
// bpfsup itself received through socket activation come first with their own
// names; then each BPF object, named by its path under the pin root:
// "fw/maps/counters", "fw/programs/xdp_fw", "fw/links/xdp_fw".
// BPFSUP_PIN_ROOT tells the child where the pins are. Any language reads this:
// sd_listen_fds_with_names(3), python-systemd's listen_fds_with_names(),
// go-systemd's activation.Files.
//
// LISTEN_PID must be the child's pid, which its parent cannot know before it
// forks; so bpfsup starts the child through a re-exec of itself (the exec
// helper, internal/exechelper, started by spawn.Start) that sets LISTEN_PID to its own pid, optionally drops
// privileges, and then execs the application in place. Just before that exec
// the helper marks every fd above the handed ones close-on-exec, so the
// application holds fds 0, 1, 2 and the handed ones and nothing else, not
// even an fd that bpfsup itself inherited without close-on-exec.
//
// For Go children, Map, Program, Link and Files give typed access:
//
//	counters, err := handoff.Map("counters")
//
// File descriptors: the child side keeps the inherited fds open for the life
// of the process and hands out duplicates, so each returned object may be
// closed independently.
package handoff
