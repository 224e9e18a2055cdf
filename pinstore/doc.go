// Package pinstore owns everything bpfsup keeps on bpffs and in its state
// directory: the pin layout, the rules for names in it, detecting and mounting
// bpffs, the per-object lock, adopt-or-create of maps and programs, pinning
// through a staging directory and an atomic rename, the manifest, and teardown.
//
// The layout under a pin root is
//
//	<pin-root>/<object>/maps/<map>
//	<pin-root>/<object>/programs/<program>
//	<pin-root>/<object>/links/<link>
//	<pin-root>/<object>/staging/<kind>-<name>   (transient)
//
// A pin is always created in staging/ and then moved into place with
// renameat2, so a crash leaves either the old pin or the new one, plus at most
// some staging debris that the next start removes.
//
// File descriptors: an *Object holds the fd of its lock file for as long as it
// is open; maps and programs returned by it belong to the caller.
//
// What survives a restart of the process: the pins (until reboot or teardown),
// and the manifest under the state directory (until reboot). The lock does not:
// the kernel releases it when the holder dies, so a crashed supervisor never
// blocks the next one.
package pinstore
