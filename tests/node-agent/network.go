package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	corev1 "k8s.io/api/core/v1"
)

// sandbox is a pod's network: its namespace and what the CNI configuration gave it.
type sandbox struct {
	id    string // the "infra container" ID CNI plugins key their state by
	netns string // the namespace's name under /run/netns
	ip    string
}

func (s *sandbox) path() string { return filepath.Join("/run/netns", s.netns) }

// network runs the node's CNI configuration as a kubelet's container runtime does.
type network struct {
	cni     *libcni.CNIConfig
	confDir string
	prefix  string
}

func newNetwork(cfg *config) *network {
	return &network{
		cni:     libcni.NewCNIConfigWithCacheDir([]string{cfg.cniBinDir}, filepath.Join(cfg.stateDir, "cni-cache"), nil),
		confDir: cfg.cniConfDir,
		prefix:  cfg.netnsPrefix,
	}
}

// conflist is the node's network configuration: the first file of the directory in
// lexical order, as containerd and CRI-O pick it. It is read again for every pod, so a
// chained plugin installed meanwhile (istio-cni's) takes part from the next pod on.
func (n *network) conflist() (*libcni.NetworkConfigList, error) {
	files, err := libcni.ConfFiles(n.confDir, []string{".conf", ".conflist", ".json"})
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", n.confDir, err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no network configuration in %s (the network plugin is not ready)", n.confDir)
	}
	sort.Strings(files)
	list, err := libcni.NetworkConfFromFile(files[0])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", files[0], err)
	}
	return list, nil
}

func runtimeConf(s *sandbox, pod *corev1.Pod) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: s.id,
		NetNS:       s.path(),
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", pod.Namespace},
			{"K8S_POD_NAME", pod.Name},
			{"K8S_POD_INFRA_CONTAINER_ID", s.id},
			{"K8S_POD_UID", string(pod.UID)},
		},
	}
}

// add creates the pod's namespace and runs ADD of every plugin of the configuration.
// On failure nothing is left behind.
func (n *network) add(ctx context.Context, pod *corev1.Pod) (*sandbox, error) {
	list, err := n.conflist()
	if err != nil {
		return nil, err
	}
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	s := &sandbox{id: hex.EncodeToString(id)}
	s.netns = fmt.Sprintf("%s-%s-%s", n.prefix, shorten(pod.Name, 40), s.id[:8])
	if err := ip("netns", "add", s.netns); err != nil {
		return nil, err
	}
	if err := ip("-n", s.netns, "link", "set", "lo", "up"); err != nil {
		_ = ip("netns", "del", s.netns)
		return nil, err
	}
	result, err := n.cni.AddNetworkList(ctx, list, runtimeConf(s, pod))
	if err != nil {
		// A failed ADD is followed by DEL, so plugins release what they took.
		_ = n.cni.DelNetworkList(context.Background(), list, runtimeConf(s, pod))
		_ = ip("netns", "del", s.netns)
		return nil, fmt.Errorf("network %s: %w", list.Name, err)
	}
	current, err := types100.NewResultFromResult(result)
	if err == nil {
		for _, address := range current.IPs {
			if address.Address.IP.To4() != nil || s.ip == "" {
				s.ip = address.Address.IP.String()
			}
		}
	}
	if s.ip == "" {
		_ = n.cni.DelNetworkList(context.Background(), list, runtimeConf(s, pod))
		_ = ip("netns", "del", s.netns)
		return nil, fmt.Errorf("network %s gave the pod no IP address", list.Name)
	}
	return s, nil
}

// del runs DEL of every plugin (in reverse) with the configuration as it is now, then
// deletes the namespace.
func (n *network) del(ctx context.Context, s *sandbox, pod *corev1.Pod) error {
	var failure error
	if list, err := n.conflist(); err != nil {
		failure = err
	} else if err := n.cni.DelNetworkList(ctx, list, runtimeConf(s, pod)); err != nil {
		failure = fmt.Errorf("network %s: DEL: %w", list.Name, err)
	}
	if err := ip("netns", "del", s.netns); err != nil && failure == nil {
		failure = err
	}
	return failure
}

func ip(args ...string) error {
	output, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(output)))
	}
	return nil
}

func shorten(name string, limit int) string {
	if len(name) > limit {
		return name[:limit]
	}
	return name
}

// podIPs is the status form of one address.
func podIPs(address string) []corev1.PodIP {
	if net.ParseIP(address) == nil {
		return nil
	}
	return []corev1.PodIP{{IP: address}}
}
