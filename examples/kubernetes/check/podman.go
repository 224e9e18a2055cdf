package check

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Node is what a test gives in place of a node's: the network namespace a
// hostNetwork pod joins, and the directories that stand for hostPath volumes
// and ConfigMaps. The test's namespace stands for the node's own, its private
// pin root and state directory for the node's /sys/fs/bpf and /run/bpfsup.
type Node struct {
	// Netns is the path of the network namespace a hostNetwork pod runs in.
	Netns string
	// HostPaths maps a hostPath volume's path to the directory used for it.
	HostPaths map[string]string
	// ConfigMaps maps a ConfigMap's name to a directory holding its files.
	ConfigMaps map[string]string
}

// PodmanRun is the argument list of `podman run` that runs the container
// named container of spec as the kubelet would on node: its image (image,
// which a rollout changes), command and arguments, capabilities, seccomp
// profile, read-only root, privilege escalation, stop timeout (the pod's
// grace period) and volume mounts with their propagation. What the kubelet
// would do that this does not know (another kind of volume, a host PID
// namespace) is an error, not ignored.
func PodmanRun(spec *corev1.PodSpec, container, name, image string, node Node) ([]string, error) {
	i := slices.IndexFunc(spec.Containers, func(c corev1.Container) bool { return c.Name == container })
	if i < 0 {
		return nil, fmt.Errorf("no container %q in the pod template", container)
	}
	c := &spec.Containers[i]
	if spec.HostPID || spec.HostIPC || len(spec.InitContainers) > 0 {
		return nil, fmt.Errorf("container %s: hostPID, hostIPC and init containers are not modelled", container)
	}
	// A pod network is not modelled: a pod without the host's network (the
	// removal Job, which needs none) gets no network at all.
	network := "none"
	if spec.HostNetwork {
		network = "ns:" + node.Netns
	}
	args := []string{"--name", name, "--network", network}
	if spec.TerminationGracePeriodSeconds != nil {
		args = append(args, "--stop-timeout", strconv.FormatInt(*spec.TerminationGracePeriodSeconds, 10))
	}
	sec, err := securityArgs(spec, c)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", container, err)
	}
	args = append(args, sec...)
	vols, err := volumeArgs(spec, c, node)
	if err != nil {
		return nil, fmt.Errorf("container %s: %w", container, err)
	}
	args = append(args, vols...)
	if len(c.Command) > 0 {
		args = append(args, "--entrypoint", c.Command[0])
	}
	args = append(args, image)
	if len(c.Command) > 1 {
		args = append(args, c.Command[1:]...)
	}
	return append(args, c.Args...), nil
}

// securityArgs turns the container's security context (and the pod's
// seccomp profile) into podman's flags.
func securityArgs(spec *corev1.PodSpec, c *corev1.Container) ([]string, error) {
	var args []string
	sc := c.SecurityContext
	if sc == nil {
		sc = &corev1.SecurityContext{}
	}
	if sc.Privileged != nil && *sc.Privileged {
		args = append(args, "--privileged")
	}
	if sc.Capabilities != nil {
		for _, d := range sc.Capabilities.Drop {
			args = append(args, "--cap-drop", strings.ToLower(string(d)))
		}
		for _, a := range sc.Capabilities.Add {
			args = append(args, "--cap-add", strings.ToLower(string(a)))
		}
	}
	if sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem {
		args = append(args, "--read-only")
	}
	if sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation {
		args = append(args, "--security-opt", "no-new-privileges")
	}
	seccomp := sc.SeccompProfile
	if seccomp == nil && spec.SecurityContext != nil {
		seccomp = spec.SecurityContext.SeccompProfile
	}
	switch {
	case seccomp == nil:
		// The kubelet's default: no profile at all.
		args = append(args, "--security-opt", "seccomp=unconfined")
	case seccomp.Type == corev1.SeccompProfileTypeUnconfined:
		args = append(args, "--security-opt", "seccomp=unconfined")
	case seccomp.Type == corev1.SeccompProfileTypeRuntimeDefault:
		// podman's default profile.
	default:
		return nil, fmt.Errorf("seccomp profile %s is not modelled", seccomp.Type)
	}
	return args, nil
}

// propagation is podman's word for a volume mount's propagation.
var propagation = map[corev1.MountPropagationMode]string{
	corev1.MountPropagationNone:            "rprivate",
	corev1.MountPropagationHostToContainer: "rslave",
	corev1.MountPropagationBidirectional:   "rshared",
}

// volumeArgs turns the container's volume mounts into podman's -v flags,
// with node's directories in place of hostPath volumes and ConfigMaps.
func volumeArgs(spec *corev1.PodSpec, c *corev1.Container, node Node) ([]string, error) {
	var args []string
	for _, m := range c.VolumeMounts {
		i := slices.IndexFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
		if i < 0 {
			return nil, fmt.Errorf("volume mount %s: no such volume", m.Name)
		}
		v := spec.Volumes[i]
		var src string
		readOnly := m.ReadOnly
		switch {
		case v.HostPath != nil:
			src = node.HostPaths[v.HostPath.Path]
			if src == "" {
				return nil, fmt.Errorf("volume %s: the test gives no directory for hostPath %s", v.Name, v.HostPath.Path)
			}
		case v.ConfigMap != nil:
			src = node.ConfigMaps[v.ConfigMap.Name]
			if src == "" {
				return nil, fmt.Errorf("volume %s: the test gives no directory for ConfigMap %s", v.Name, v.ConfigMap.Name)
			}
			readOnly = true // the kubelet mounts a ConfigMap read-only
		default:
			return nil, fmt.Errorf("volume %s: only hostPath and configMap volumes are modelled", v.Name)
		}
		if m.SubPath != "" || m.SubPathExpr != "" {
			return nil, fmt.Errorf("volume mount %s: subPath is not modelled", m.Name)
		}
		opts := []string{}
		if readOnly {
			opts = append(opts, "ro")
		}
		mode := corev1.MountPropagationNone
		if m.MountPropagation != nil {
			mode = *m.MountPropagation
		}
		opts = append(opts, propagation[mode])
		args = append(args, "-v", src+":"+m.MountPath+":"+strings.Join(opts, ","))
	}
	return args, nil
}

// ReadinessCommand is the exec readiness probe's command of the container
// named container of spec, or an error when it has none.
func ReadinessCommand(spec *corev1.PodSpec, container string) ([]string, error) {
	for _, c := range spec.Containers {
		if c.Name != container {
			continue
		}
		if c.ReadinessProbe == nil || c.ReadinessProbe.Exec == nil || len(c.ReadinessProbe.Exec.Command) == 0 {
			return nil, fmt.Errorf("container %s has no exec readiness probe", container)
		}
		return c.ReadinessProbe.Exec.Command, nil
	}
	return nil, fmt.Errorf("no container %q in the pod template", container)
}
