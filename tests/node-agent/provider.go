package main

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/log"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
)

// provider is the node's container runtime: the pods scheduled here, each run by a
// podRuntime.
type provider struct {
	cfg     *config
	client  kubernetes.Interface
	network *network
	spawns  chan spawnRequest

	mu     sync.Mutex
	pods   map[string]*podRuntime // by namespace/name
	notify func(*corev1.Pod)
}

// spawnRequest starts a process from the spawner's thread (see spawner).
type spawnRequest struct {
	cmd  *exec.Cmd
	done chan error
}

func newRuntime(cfg *config, client kubernetes.Interface) *provider {
	p := &provider{
		cfg:     cfg,
		client:  client,
		network: newNetwork(cfg),
		spawns:  make(chan spawnRequest),
		pods:    map[string]*podRuntime{},
		notify:  func(*corev1.Pod) {},
	}
	go p.spawner()
	return p
}

// spawner starts every container process from one OS thread that never exits, so the
// processes' parent-death signal (SIGKILL) fires when the agent dies, never earlier:
// Linux sends it when the forking thread ends, and Go may end idle threads.
func (p *provider) spawner() {
	runtime.LockOSThread()
	for request := range p.spawns {
		request.done <- request.cmd.Start()
	}
}

func (p *provider) start(cmd *exec.Cmd) error {
	done := make(chan error, 1)
	p.spawns <- spawnRequest{cmd: cmd, done: done}
	return <-done
}

func key(namespace, name string) string { return namespace + "/" + name }

// CreatePod starts running a pod; it returns at once and the pod's status follows
// through NotifyPods.
func (p *provider) CreatePod(ctx context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := key(pod.Namespace, pod.Name)
	if existing, ok := p.pods[k]; ok && existing.pod.UID == pod.UID {
		return nil
	}
	r := newPodRuntime(p, pod.DeepCopy())
	p.pods[k] = r
	go r.run()
	return nil
}

// UpdatePod takes the pod's new metadata (labels and annotations feed downwardAPI
// volumes); the rest of a pod's spec does not change once it runs.
func (p *provider) UpdatePod(ctx context.Context, pod *corev1.Pod) error {
	r := p.lookup(pod.Namespace, pod.Name)
	if r == nil {
		return errdefs.NotFoundf("pod %s/%s is not on this node", pod.Namespace, pod.Name)
	}
	r.updateMetadata(pod)
	return nil
}

// DeletePod starts the pod's termination (SIGTERM, the grace period, SIGKILL, CNI DEL);
// it may be called again while that runs.
func (p *provider) DeletePod(ctx context.Context, pod *corev1.Pod) error {
	r := p.lookup(pod.Namespace, pod.Name)
	if r == nil || r.pod.UID != pod.UID {
		return errdefs.NotFoundf("pod %s/%s is not on this node", pod.Namespace, pod.Name)
	}
	grace := int64(30)
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = *pod.Spec.TerminationGracePeriodSeconds
	}
	if pod.DeletionGracePeriodSeconds != nil {
		grace = *pod.DeletionGracePeriodSeconds
	}
	r.terminate(time.Duration(grace) * time.Second)
	return nil
}

func (p *provider) lookup(namespace, name string) *podRuntime {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pods[key(namespace, name)]
}

// forget drops a pod once it is gone from the API server too.
func (p *provider) forget(r *podRuntime) {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := key(r.pod.Namespace, r.pod.Name)
	if p.pods[k] == r {
		delete(p.pods, k)
	}
}

func (p *provider) GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	r := p.lookup(namespace, name)
	if r == nil {
		return nil, errdefs.NotFoundf("pod %s/%s is not on this node", namespace, name)
	}
	return r.snapshot(), nil
}

func (p *provider) GetPodStatus(ctx context.Context, namespace, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

func (p *provider) GetPods(ctx context.Context) ([]*corev1.Pod, error) {
	p.mu.Lock()
	runtimes := make([]*podRuntime, 0, len(p.pods))
	for _, r := range p.pods {
		runtimes = append(runtimes, r)
	}
	p.mu.Unlock()
	pods := make([]*corev1.Pod, 0, len(runtimes))
	for _, r := range runtimes {
		pods = append(pods, r.snapshot())
	}
	return pods, nil
}

// NotifyPods registers where status changes go (the pod controller's status queue).
func (p *provider) NotifyPods(ctx context.Context, notify func(*corev1.Pod)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.notify = notify
}

func (p *provider) notifier() func(*corev1.Pod) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.notify
}

func (p *provider) container(namespace, podName, name string) (*containerRuntime, error) {
	r := p.lookup(namespace, podName)
	if r == nil {
		return nil, errdefs.NotFoundf("pod %s/%s is not on this node", namespace, podName)
	}
	for _, c := range r.allContainers() {
		if c.spec.Name == name || (name == "" && !c.init) {
			return c, nil
		}
	}
	return nil, errdefs.NotFoundf("pod %s/%s has no container %q", namespace, podName, name)
}

// GetContainerLogs serves `kubectl logs`: the current run's output, or the previous
// run's with --previous; --tail and --follow are honoured.
func (p *provider) GetContainerLogs(ctx context.Context, namespace, podName, containerName string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	c, err := p.container(namespace, podName, containerName)
	if err != nil {
		return nil, err
	}
	return c.logs(ctx, opts)
}

// RunInContainer serves `kubectl exec`: the command runs in the container's namespaces
// (network, mount, PID) with its environment.
func (p *provider) RunInContainer(ctx context.Context, namespace, podName, containerName string, cmd []string, attach api.AttachIO) error {
	c, err := p.container(namespace, podName, containerName)
	if err != nil {
		return err
	}
	return c.exec(ctx, cmd, attach)
}

func (p *provider) AttachToContainer(ctx context.Context, namespace, podName, containerName string, attach api.AttachIO) error {
	return errdefs.InvalidInput("attach is not supported by the test node agent; use logs or exec")
}

func (p *provider) PortForward(ctx context.Context, namespace, pod string, port int32, stream io.ReadWriteCloser) error {
	return errdefs.InvalidInput("port-forward is not supported by the test node agent")
}

// GetStatsSummary reports the node and its pods without usage figures (nothing here
// measures them).
func (p *provider) GetStatsSummary(ctx context.Context) (*statsv1alpha1.Summary, error) {
	summary := &statsv1alpha1.Summary{Node: statsv1alpha1.NodeStats{NodeName: p.cfg.nodeName, StartTime: metav1.Now()}}
	pods, _ := p.GetPods(ctx)
	for _, pod := range pods {
		summary.Pods = append(summary.Pods, statsv1alpha1.PodStats{
			PodRef: statsv1alpha1.PodReference{Name: pod.Name, Namespace: pod.Namespace, UID: string(pod.UID)},
		})
	}
	return summary, nil
}

func (p *provider) GetMetricsResource(ctx context.Context) ([]*dto.MetricFamily, error) {
	return nil, nil
}

// deleteFromAPI removes a terminated pod's object, as a kubelet does once its containers
// and network are gone (grace 0, only that incarnation).
func (p *provider) deleteFromAPI(pod *corev1.Pod) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	options := *metav1.NewDeleteOptions(0)
	options.Preconditions = metav1.NewUIDPreconditions(string(pod.UID))
	err := p.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, options)
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return err
	}
	return nil
}

// shutdown stops every pod's processes when the agent stops (their network stays, as
// a node's does across a kubelet restart; the tests delete the namespaces).
func (p *provider) shutdown() {
	p.mu.Lock()
	runtimes := make([]*podRuntime, 0, len(p.pods))
	for _, r := range p.pods {
		runtimes = append(runtimes, r)
	}
	p.mu.Unlock()
	for _, r := range runtimes {
		r.killAll()
	}
}

// sweepOrphans removes pod directories left by an earlier run of the agent.
func (p *provider) sweepOrphans(ctx context.Context) {
	entries, err := os.ReadDir(filepath.Join(p.cfg.stateDir, "pods"))
	if err != nil {
		return
	}
	for _, entry := range entries {
		found := false
		p.mu.Lock()
		for _, r := range p.pods {
			if string(r.pod.UID) == entry.Name() {
				found = true
			}
		}
		p.mu.Unlock()
		if !found {
			log.G(ctx).Infof("removing the directory of a pod that is gone: %s", entry.Name())
			_ = os.RemoveAll(filepath.Join(p.cfg.stateDir, "pods", entry.Name()))
		}
	}
}
