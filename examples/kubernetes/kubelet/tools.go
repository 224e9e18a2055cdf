//go:build tools

// Package kubelet pins the kubelet that make k8s builds: k8s.io/kubernetes at
// the version in go.mod, its staging modules replaced by the published ones
// of the same release (the kubernetes module itself refers to them by path).
package kubelet

import _ "k8s.io/kubernetes/cmd/kubelet"
