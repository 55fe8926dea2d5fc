// Command mesh-node-agent is the test clusters' kubelet: a virtual-kubelet node whose
// provider runs each pod scheduled to it the way a kubelet and its container runtime do,
// with the real parts this machine has: a network namespace set up by the node's CNI
// configuration (ADD on start, DEL on delete), and each container as a process in that
// namespace with its own mount namespace for its volumes. Images are not pulled: a table
// the tests own maps each image reference to local executables.
//
// Run `mesh-node-agent --help` for the flags. It runs the node in namespaces of its own
// (machine.go); `node-init`, `serve` and `run-container SPEC` are the modes it starts
// itself in (not for direct use).
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/virtual-kubelet/virtual-kubelet/log"
	logruslogger "github.com/virtual-kubelet/virtual-kubelet/log/logrus"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// version is what the Node reports as its kubelet version.
const version = "v1.37.2-mesh-node-agent"

// config is everything the flags say.
type config struct {
	kubeconfig     string
	nodeName       string
	nodeIP         string
	podCIDR        string
	hostRoot       string
	stateDir       string
	cniBinDir      string
	cniConfDir     string
	images         string
	netnsPrefix    string
	servingCert    string
	servingKey     string
	clientCA       string
	port           int
	apiServer      string
	restartBackoff time.Duration
	maxBackoff     time.Duration
}

func main() {
	args := os.Args[1:]
	mode := "start"
	if len(args) > 0 {
		switch args[0] {
		case "run-container":
			if len(args) != 2 {
				fmt.Fprintln(os.Stderr, "usage: mesh-node-agent run-container SPEC-FILE")
				os.Exit(2)
			}
			runContainer(args[1]) // only returns on failure
			os.Exit(127)
		case "node-init", "serve":
			mode, args = args[0], args[1:]
		}
	}
	var cfg config
	flag.StringVar(&cfg.kubeconfig, "kubeconfig", "", "kubeconfig of the node's identity (required)")
	flag.StringVar(&cfg.nodeName, "node-name", "", "name of the Node to register (required)")
	flag.StringVar(&cfg.nodeIP, "node-ip", "", "the node's InternalIP; the kubelet API listens on it (required)")
	flag.StringVar(&cfg.podCIDR, "pod-cidr", "", "the Node's spec.podCIDR")
	flag.StringVar(&cfg.hostRoot, "host-root", "", "directory holding the node's own /run, /etc/cni, /opt/cni, /var/lib/cni and /var/lib/kubelet, mounted there in the node's mount namespace (required)")
	flag.StringVar(&cfg.stateDir, "state-dir", "/var/lib/kubelet", "where pods' volumes and logs live, on the node")
	flag.StringVar(&cfg.cniBinDir, "cni-bin-dir", "/opt/cni/bin", "CNI plugin binaries, on the node")
	flag.StringVar(&cfg.cniConfDir, "cni-conf-dir", "/etc/cni/net.d", "CNI network configuration, on the node")
	flag.StringVar(&cfg.images, "images", "", "JSON file mapping image references to executables (required)")
	flag.StringVar(&cfg.netnsPrefix, "netns-prefix", "mesh-pod", "prefix of the pods' network namespace names")
	flag.StringVar(&cfg.servingCert, "tls-cert-file", "", "serving certificate of the kubelet API (required)")
	flag.StringVar(&cfg.servingKey, "tls-private-key-file", "", "its key (required)")
	flag.StringVar(&cfg.clientCA, "client-ca-file", "", "CA of the client certificates the kubelet API accepts (the API server's); bearer tokens go to TokenReview (required)")
	flag.IntVar(&cfg.port, "port", 10250, "port of the kubelet API")
	flag.StringVar(&cfg.apiServer, "kubernetes-service", "", "HOST:PORT containers reach the API server at, set as KUBERNETES_SERVICE_HOST/PORT (there is no kube-proxy to translate the kubernetes Service)")
	flag.DurationVar(&cfg.restartBackoff, "restart-backoff", 10*time.Second, "first delay before restarting a crashed container; doubles each time")
	flag.DurationVar(&cfg.maxBackoff, "max-restart-backoff", 5*time.Minute, "longest delay before restarting a crashed container")
	_ = flag.CommandLine.Parse(args)
	if err := cfg.validate(); err != nil {
		fmt.Fprintf(os.Stderr, "mesh-node-agent: %v\n", err)
		os.Exit(2)
	}
	switch mode {
	case "start":
		os.Exit(startMachine(args))
	case "node-init":
		os.Exit(nodeInit(args, cfg.hostRoot))
	}
	logger := logrus.StandardLogger()
	logger.SetLevel(logrus.InfoLevel)
	log.L = logruslogger.FromLogrus(logrus.NewEntry(logger))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, &cfg); err != nil {
		fmt.Fprintf(os.Stderr, "mesh-node-agent: %v\n", err)
		os.Exit(1)
	}
}

func (cfg *config) validate() error {
	required := map[string]string{
		"--kubeconfig": cfg.kubeconfig, "--node-name": cfg.nodeName, "--node-ip": cfg.nodeIP,
		"--host-root": cfg.hostRoot, "--images": cfg.images, "--tls-cert-file": cfg.servingCert,
		"--tls-private-key-file": cfg.servingKey, "--client-ca-file": cfg.clientCA,
	}
	for name, value := range required {
		if value == "" {
			return fmt.Errorf("%s is required", name)
		}
	}
	if net.ParseIP(cfg.nodeIP) == nil {
		return fmt.Errorf("--node-ip %q is not an IP address", cfg.nodeIP)
	}
	if cfg.podCIDR != "" {
		if _, _, err := net.ParseCIDR(cfg.podCIDR); err != nil {
			return fmt.Errorf("--pod-cidr: %v", err)
		}
	}
	if cfg.apiServer != "" {
		if _, _, err := net.SplitHostPort(cfg.apiServer); err != nil {
			return fmt.Errorf("--kubernetes-service: %v", err)
		}
	}
	if _, err := loadImages(cfg.images); err != nil {
		return err
	}
	return nil
}

func run(ctx context.Context, cfg *config) error {
	// virtual-kubelet builds a default client from $KUBECONFIG before taking ours.
	os.Setenv("KUBECONFIG", cfg.kubeconfig)
	restConfig, err := clientcmd.BuildConfigFromFlags("", cfg.kubeconfig)
	if err != nil {
		return fmt.Errorf("reading --kubeconfig: %w", err)
	}
	client, err := kubernetes.NewForConfig(restConfig)
	if err != nil {
		return err
	}
	for _, dir := range []string{cfg.stateDir, cfg.cniBinDir, cfg.cniConfDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	auth, err := nodeutil.WebhookAuth(client, cfg.nodeName, func(auth *nodeutil.WebhookAuthConfig) error {
		ca, err := dynamiccertificates.NewDynamicCAContentFromFile("client-ca", cfg.clientCA)
		if err != nil {
			return fmt.Errorf("reading --client-ca-file: %w", err)
		}
		auth.AuthnConfig.ClientCertificateCAContentProvider = ca
		return nil
	})
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	var runtime *provider
	newProvider := func(nodeutil.ProviderConfig) (nodeutil.Provider, node.NodeProvider, error) {
		runtime = newRuntime(cfg, client)
		return runtime, nil, nil
	}
	vk, err := nodeutil.NewNode(cfg.nodeName, newProvider,
		nodeutil.WithClient(client),
		nodeutil.AttachProviderRoutes(mux),
		nodeutil.WithTLSConfig(
			nodeutil.WithKeyPairFromPath(cfg.servingCert, cfg.servingKey),
			nodeutil.WithCAFromPath(cfg.clientCA),
			func(tlsConfig *tls.Config) error {
				// Clients may present a certificate (the API server does) or a token.
				tlsConfig.ClientAuth = tls.VerifyClientCertIfGiven
				return nil
			},
		),
		func(nc *nodeutil.NodeConfig) error {
			nc.Handler = nodeutil.WithAuth(auth, mux)
			nc.HTTPListenAddr = net.JoinHostPort(cfg.nodeIP, strconv.Itoa(cfg.port))
			nc.NumWorkers = 4
			// The provider resolves the environment when each container starts, when the
			// pod IP is known (virtual-kubelet's resolution refuses status.podIP).
			nc.SkipDownwardAPIResolution = true
			nc.PodControllerConfigOpts = append(nc.PodControllerConfigOpts, func(pc *node.PodControllerConfig) error {
				pc.PodClient = orderedPods{PodsGetter: pc.PodClient, p: &runtime}
				return nil
			})
			nc.NodeSpec = nodeSpec(cfg)
			return nil
		},
	)
	if err != nil {
		return err
	}
	runtime.sweepOrphans(ctx)
	if err := vk.Run(ctx); err != nil && ctx.Err() == nil {
		return err
	}
	// Stopped by a signal: pods' processes stop with the agent (they are its children),
	// as a node's do when it goes down.
	runtime.shutdown()
	return nil
}

// nodeSpec is the Node this agent registers: its address, capacity and the labels
// DaemonSets select on.
func nodeSpec(cfg *config) corev1.Node {
	condition := func(kind corev1.NodeConditionType, status corev1.ConditionStatus, reason string) corev1.NodeCondition {
		now := metav1.Now()
		return corev1.NodeCondition{Type: kind, Status: status, Reason: reason, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("8"),
		corev1.ResourceMemory: resource.MustParse("16Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	return corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: cfg.nodeName,
			Labels: map[string]string{
				"kubernetes.io/hostname": cfg.nodeName,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     "amd64",
			},
		},
		Spec: corev1.NodeSpec{PodCIDR: cfg.podCIDR, PodCIDRs: nonEmpty(cfg.podCIDR)},
		Status: corev1.NodeStatus{
			Phase:       corev1.NodePending,
			Capacity:    capacity,
			Allocatable: capacity,
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: cfg.nodeIP},
				{Type: corev1.NodeHostName, Address: cfg.nodeName},
			},
			DaemonEndpoints: corev1.NodeDaemonEndpoints{
				KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(cfg.port)},
			},
			NodeInfo: corev1.NodeSystemInfo{
				OperatingSystem:         "linux",
				Architecture:            "amd64",
				KubeletVersion:          version,
				ContainerRuntimeVersion: "mesh-node-agent://" + version,
			},
			Conditions: []corev1.NodeCondition{
				condition(corev1.NodeReady, corev1.ConditionFalse, "KubeletNotReady"),
				condition(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory"),
				condition(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure"),
				condition(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID"),
				condition(corev1.NodeNetworkUnavailable, corev1.ConditionFalse, "RouteCreated"),
			},
		},
	}
}

func nonEmpty(value string) []string {
	if value == "" {
		return nil
	}
	return []string{value}
}
