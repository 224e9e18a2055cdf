// Package status is what `bpfsup status` reports: every object under a
// pin root, read from the pins, the kernel and bpfsup's manifests, whether
// a supervisor runs or not. The kernel wins where a manifest disagrees, and
// every disagreement is a problem: a link that runs another program than
// the one bpfsup installed or sits on no configured hook, a pin bpfsup did
// not make, debris of a crash. Healthy and Ready say whether a health check
// and a readiness probe pass.
//
// It holds no fds beyond the call that reads them, and keeps nothing.
package status
