package pinstore

import (
	"errors"

	"github.com/cilium/ebpf"
)

// Errors returned by this package. Wrapped errors add the thing they are about.
var (
	// ErrBadName: a name breaks the rules of CheckName.
	ErrBadName = errors.New("invalid name")
	// ErrNotBPFFS: the pin root is not on a bpffs.
	ErrNotBPFFS = errors.New("not on bpffs")
	// ErrForeignMountNS: bpffs would have to be mounted in a mount namespace
	// that is not the host's, where its pins would die with the namespace.
	ErrForeignMountNS = errors.New("not in the host's mount namespace")
	// ErrOtherPinRoot: the state directory holds the manifest of an object
	// of the same name under another pin root. One state directory serves
	// one pin root: manifests are named by object alone, and a start would
	// overwrite that object's record, after which nothing would say what
	// bpfsup made there.
	ErrOtherPinRoot = errors.New("the state directory serves another pin root")
	// ErrLocked: another supervisor holds the object's lock.
	ErrLocked = errors.New("object is locked by another supervisor")
	// ErrMapIncompatible: a pinned map differs from the map in the object.
	ErrMapIncompatible = ebpf.ErrMapIncompatible
	// ErrNotSupported: the kernel lacks a feature. Re-exported from cilium/ebpf.
	ErrNotSupported = ebpf.ErrNotSupported
)
