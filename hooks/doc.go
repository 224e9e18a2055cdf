// Package hooks knows the attach points bpfsup can put a program on: how a
// hook is spelled ("xdp:veth0", "tcx/ingress:veth0"), how to attach a program
// there with a bpf_link, whether that link can be updated in place, and
// whether a pinned link still sits on the hook it was made for. One file per
// kind of hook.
//
// File descriptors: Attach returns a link the caller owns; nothing else is
// kept open.
//
// Network hooks may name an interface in another network namespace (Spec.Netns):
// the attach runs on an OS thread switched into that namespace, and the link
// lives on like any other, pinned in the caller's bpffs.
package hooks
