package main

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/log"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// retryEvery is how often a pod that cannot start yet (a missing Secret, no network
// configuration) tries again.
const retryEvery = 2 * time.Second

// podRuntime runs one pod: volumes, then its network, then init containers in order, then
// the containers, until it is deleted.
type podRuntime struct {
	p   *provider
	dir string

	// ctx ends when the pod is deleted: restarts and probes stop.
	ctx    context.Context
	cancel context.CancelFunc
	grace  chan time.Duration // the first termination request's grace period
	done   chan struct{}      // closed once everything is torn down

	mu         sync.Mutex
	pod        *corev1.Pod // as given to CreatePod, with later metadata
	status     corev1.PodStatus
	sandbox    *sandbox
	volumes    *volumeSet
	init       []*containerRuntime
	containers []*containerRuntime
	terminated bool
}

func newPodRuntime(p *provider, pod *corev1.Pod) *podRuntime {
	ctx, cancel := context.WithCancel(context.Background())
	r := &podRuntime{
		p:      p,
		dir:    filepath.Join(p.cfg.stateDir, "pods", string(pod.UID)),
		ctx:    ctx,
		cancel: cancel,
		grace:  make(chan time.Duration, 1),
		done:   make(chan struct{}),
		pod:    pod,
		status: *pod.Status.DeepCopy(),
	}
	for i := range pod.Spec.InitContainers {
		r.init = append(r.init, newContainerRuntime(r, pod.Spec.InitContainers[i], true))
	}
	for i := range pod.Spec.Containers {
		r.containers = append(r.containers, newContainerRuntime(r, pod.Spec.Containers[i], false))
	}
	now := metav1.Now()
	r.status.StartTime = &now
	r.status.HostIP = p.cfg.nodeIP
	r.status.HostIPs = []corev1.HostIP{{IP: p.cfg.nodeIP}}
	return r
}

func (r *podRuntime) allContainers() []*containerRuntime {
	return append(append([]*containerRuntime{}, r.init...), r.containers...)
}

func (r *podRuntime) name() string { return r.pod.Namespace + "/" + r.pod.Name }

func (r *podRuntime) updateMetadata(pod *corev1.Pod) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.pod.Labels = pod.Labels
	r.pod.Annotations = pod.Annotations
	r.pod.DeletionTimestamp = pod.DeletionTimestamp
	r.pod.DeletionGracePeriodSeconds = pod.DeletionGracePeriodSeconds
}

// run is the pod's life, in one goroutine.
func (r *podRuntime) run() {
	defer close(r.done)
	ctx := r.ctx
	logger := log.G(ctx).WithField("pod", r.name())
	r.publish()
	if err := os.MkdirAll(r.dir, 0o755); err != nil {
		r.setWaiting("CreateContainerConfigError", err.Error())
	}
	volumes := r.retry("ContainerCreating", func() error {
		set, err := prepareVolumes(ctx, r)
		if err == nil {
			r.mu.Lock()
			r.volumes = set
			r.mu.Unlock()
		}
		return err
	})
	if volumes {
		go r.refreshVolumes()
	}
	networked := volumes && r.retry("ContainerCreating", func() error {
		if r.pod.Spec.HostNetwork {
			r.mu.Lock()
			r.status.PodIP = r.p.cfg.nodeIP
			r.status.PodIPs = podIPs(r.p.cfg.nodeIP)
			r.mu.Unlock()
			return nil
		}
		s, err := r.p.network.add(ctx, r.pod)
		if err != nil {
			return err
		}
		r.mu.Lock()
		r.sandbox = s
		r.status.PodIP = s.ip
		r.status.PodIPs = podIPs(s.ip)
		r.mu.Unlock()
		logger.Infof("network ready: %s in %s", s.ip, s.netns)
		return nil
	})
	if networked {
		r.setWaiting("", "")
		r.runContainers()
	}
	// Deleted (or, with restartPolicy Never/OnFailure, finished and then deleted).
	<-ctx.Done()
	r.stopContainers(<-r.grace)
	r.mu.Lock()
	s := r.sandbox
	r.mu.Unlock()
	if s != nil {
		if err := r.p.network.del(context.Background(), s, r.pod); err != nil {
			logger.Errorf("tearing down the network: %v", err)
		} else {
			logger.Infof("network torn down (%s)", s.netns)
		}
	}
	_ = os.RemoveAll(r.dir)
	r.mu.Lock()
	r.terminated = true
	r.mu.Unlock()
	r.publish()
	if err := r.p.deleteFromAPI(r.pod); err != nil {
		logger.Errorf("deleting the terminated pod: %v", err)
	}
	r.p.forget(r)
}

// retry calls step until it succeeds, showing its error as the pod's waiting reason, or
// until the pod is deleted (false).
func (r *podRuntime) retry(reason string, step func() error) bool {
	for {
		err := step()
		if err == nil {
			return true
		}
		log.G(r.ctx).WithField("pod", r.name()).Warnf("%s: %v", reason, err)
		r.setWaiting(reason, err.Error())
		select {
		case <-r.ctx.Done():
			return false
		case <-time.After(retryEvery):
		}
	}
}

func (r *podRuntime) setWaiting(reason, message string) {
	r.mu.Lock()
	for _, c := range r.allContainers() {
		if c.status.State.Running == nil && c.status.State.Terminated == nil && reason != "" {
			c.status.State.Waiting = &corev1.ContainerStateWaiting{Reason: reason, Message: message}
		}
	}
	r.mu.Unlock()
	r.publish()
}

// runContainers runs the init containers to completion, in order, then starts every
// container; it returns once they are all running (or the pod failed).
func (r *podRuntime) runContainers() {
	for _, c := range r.init {
		if !c.run(r.ctx) {
			return
		}
	}
	for _, c := range r.containers {
		go c.run(r.ctx)
	}
}

// terminate ends the pod: containers get SIGTERM, SIGKILL after the grace period, then
// the network is torn down and the object deleted. Later calls only wait.
func (r *podRuntime) terminate(grace time.Duration) {
	select {
	case r.grace <- grace:
	default:
	}
	r.cancel()
}

func (r *podRuntime) stopContainers(grace time.Duration) {
	var wg sync.WaitGroup
	for _, c := range r.allContainers() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.stop(grace)
		}()
	}
	wg.Wait()
}

func (r *podRuntime) killAll() {
	for _, c := range r.allContainers() {
		c.stop(0)
	}
}

// snapshot is the pod with its current status.
func (r *podRuntime) snapshot() *corev1.Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	pod := r.pod.DeepCopy()
	pod.Status = r.statusLocked()
	return pod
}

func (r *podRuntime) publish() {
	r.p.notifier()(r.snapshot())
}

// statusLocked computes the pod's status as a kubelet reports it: phase, conditions,
// addresses and each container's state.
func (r *podRuntime) statusLocked() corev1.PodStatus {
	status := *r.status.DeepCopy()
	status.InitContainerStatuses = nil
	status.ContainerStatuses = nil
	initialized := true
	for _, c := range r.init {
		status.InitContainerStatuses = append(status.InitContainerStatuses, c.statusLocked())
		if c.status.State.Terminated == nil || c.status.State.Terminated.ExitCode != 0 {
			initialized = false
		}
	}
	ready, running, succeeded, failed, restarting := true, 0, 0, 0, false
	for _, c := range r.containers {
		cs := c.statusLocked()
		status.ContainerStatuses = append(status.ContainerStatuses, cs)
		if !cs.Ready {
			ready = false
		}
		switch {
		case cs.State.Running != nil:
			running++
		case cs.State.Terminated != nil && cs.State.Terminated.ExitCode == 0:
			succeeded++
		case cs.State.Terminated != nil:
			failed++
		case cs.State.Waiting != nil && cs.RestartCount > 0:
			restarting = true
		}
	}
	total := len(r.containers)
	initFailed := false
	for _, c := range r.init {
		if c.finalFailure {
			initFailed = true
		}
	}
	always := r.pod.Spec.RestartPolicy == corev1.RestartPolicyAlways || r.pod.Spec.RestartPolicy == ""
	switch {
	case initFailed:
		status.Phase = corev1.PodFailed
	case r.terminated && failed > 0:
		status.Phase = corev1.PodFailed
	case r.terminated:
		status.Phase = corev1.PodSucceeded
	// Finished for good: nothing restarts (a container that stopped under restartPolicy
	// Always, or failed under OnFailure, is about to restart).
	case total > 0 && succeeded+failed == total && !always && (failed == 0 || r.pod.Spec.RestartPolicy == corev1.RestartPolicyNever):
		if failed > 0 {
			status.Phase = corev1.PodFailed
		} else {
			status.Phase = corev1.PodSucceeded
		}
	case running > 0 || restarting || succeeded+failed > 0:
		status.Phase = corev1.PodRunning
	default:
		status.Phase = corev1.PodPending
	}
	if status.Phase != corev1.PodRunning {
		ready = false
	}
	sandboxReady := r.sandbox != nil || (r.pod.Spec.HostNetwork && r.status.PodIP != "")
	// Conditions live in r.status, so their transition times hold between snapshots.
	setCondition(&r.status, corev1.PodScheduled, true, "")
	setCondition(&r.status, "PodReadyToStartContainers", sandboxReady && !r.terminated, "")
	setCondition(&r.status, corev1.PodInitialized, initialized, "ContainersNotInitialized")
	setCondition(&r.status, corev1.ContainersReady, ready, "ContainersNotReady")
	setCondition(&r.status, corev1.PodReady, ready, "ContainersNotReady")
	status.Conditions = r.status.DeepCopy().Conditions
	return status
}

// setCondition sets a condition, keeping its transition time while its status holds.
func setCondition(status *corev1.PodStatus, kind corev1.PodConditionType, value bool, reason string) {
	want := corev1.ConditionFalse
	if value {
		want = corev1.ConditionTrue
		reason = ""
	}
	for i := range status.Conditions {
		if status.Conditions[i].Type == kind {
			if status.Conditions[i].Status != want {
				status.Conditions[i].Status = want
				status.Conditions[i].Reason = reason
				status.Conditions[i].LastTransitionTime = metav1.Now()
			}
			return
		}
	}
	status.Conditions = append(status.Conditions, corev1.PodCondition{
		Type: kind, Status: want, Reason: reason, LastTransitionTime: metav1.Now(),
	})
}
