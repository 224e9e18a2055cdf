// Package bpffs is what bpfsup's packages need to know of a pin on bpffs
// and of the kernel object behind it, below both hooks and pinstore: what
// a pin holds (OpenPin, PinKind, ReadPin) and the kernel's info about an
// object (ObjInfo), in as few system calls as that takes.
//
// File descriptors: OpenPin returns one, the caller's; the rest close what
// they open. Nothing survives a restart of the process.
package bpffs
