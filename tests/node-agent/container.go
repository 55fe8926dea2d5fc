package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/log"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// resetBackoffAfter is how long a container must run before its restart back-off starts
// over (a kubelet's is 10 minutes).
const resetBackoffAfter = 10 * time.Minute

// containerRuntime runs one container: its process, restarts and probes. Its status
// fields are guarded by the pod's mutex.
type containerRuntime struct {
	pod  *podRuntime
	spec corev1.Container
	init bool

	status       corev1.ContainerStatus
	process      *os.Process
	exited       chan struct{} // closed when the current run's process has exited
	finalFailure bool          // an init container that failed and will not restart
}

func newContainerRuntime(pod *podRuntime, spec corev1.Container, init bool) *containerRuntime {
	falseValue := false
	return &containerRuntime{
		pod:  pod,
		spec: spec,
		init: init,
		status: corev1.ContainerStatus{
			Name:    spec.Name,
			Image:   spec.Image,
			State:   corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}},
			Started: &falseValue,
		},
	}
}

func (c *containerRuntime) statusLocked() corev1.ContainerStatus {
	return *c.status.DeepCopy()
}

func (c *containerRuntime) update(change func(status *corev1.ContainerStatus)) {
	c.pod.mu.Lock()
	change(&c.status)
	c.pod.mu.Unlock()
	c.pod.publish()
}

func (c *containerRuntime) logf(format string, args ...any) {
	log.G(c.pod.ctx).WithField("pod", c.pod.name()).WithField("container", c.spec.Name).Infof(format, args...)
}

// run starts the container and restarts it per the pod's restartPolicy, with a
// kubelet's back-off, until the pod is deleted. For an init container it returns once
// the container succeeded (true) or failed for good (false).
func (c *containerRuntime) run(ctx context.Context) bool {
	backoff := time.Duration(0)
	for ctx.Err() == nil {
		started := time.Now()
		code, ok := c.runOnce(ctx)
		if ctx.Err() != nil {
			return false
		}
		policy := c.pod.pod.Spec.RestartPolicy
		if c.init && ok && code == 0 {
			return true
		}
		restart := policy == corev1.RestartPolicyAlways || policy == "" ||
			(policy == corev1.RestartPolicyOnFailure && (code != 0 || !ok))
		if c.init {
			restart = policy != corev1.RestartPolicyNever
		}
		if !restart {
			if c.init {
				c.update(func(*corev1.ContainerStatus) { c.finalFailure = true })
			}
			return false
		}
		if time.Since(started) > resetBackoffAfter {
			backoff = 0
		}
		reason := "CrashLoopBackOff"
		if !ok {
			reason = c.status.State.Waiting.Reason
			if reason == "ErrImagePull" {
				reason = "ImagePullBackOff"
			}
		}
		if ok {
			c.update(func(s *corev1.ContainerStatus) {
				s.RestartCount++
				s.LastTerminationState = s.State
				s.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{
					Reason:  reason,
					Message: fmt.Sprintf("back-off %s restarting failed container=%s pod=%s", backoff, c.spec.Name, c.pod.pod.Name),
				}}
			})
		} else {
			c.update(func(s *corev1.ContainerStatus) {
				s.State.Waiting.Reason = reason
			})
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		if backoff == 0 {
			backoff = c.pod.p.cfg.restartBackoff
		} else {
			backoff = min(2*backoff, c.pod.p.cfg.maxBackoff)
		}
	}
	return false
}

// runOnce starts the process and waits for it to exit; ok is false when it could not
// start (the waiting state says why).
func (c *containerRuntime) runOnce(ctx context.Context) (code int, ok bool) {
	spec, err := c.containerSpec()
	if err != nil {
		reason := "CreateContainerConfigError"
		var unmapped *unmappedImage
		if errors.As(err, &unmapped) {
			reason = "ErrImagePull"
		}
		c.logf("%s: %v", reason, err)
		c.update(func(s *corev1.ContainerStatus) {
			s.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: err.Error()}}
		})
		return 0, false
	}
	runDir := filepath.Join(c.pod.dir, "containers", c.spec.Name)
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return 0, false
	}
	specFile := filepath.Join(runDir, "spec.json")
	data, _ := json.Marshal(spec)
	if err := os.WriteFile(specFile, data, 0o600); err != nil {
		return 0, false
	}
	logFile, err := os.OpenFile(c.logPath(int(c.status.RestartCount)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, false
	}
	self, _ := os.Executable()
	cmd := exec.Command(self, "run-container", specFile)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	flags := uintptr(syscall.CLONE_NEWNS)
	if spec.NewPIDNS {
		flags |= syscall.CLONE_NEWPID
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: flags, Pdeathsig: syscall.SIGKILL}
	if err := c.pod.p.start(cmd); err != nil {
		logFile.Close()
		c.update(func(s *corev1.ContainerStatus) {
			s.State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "RunContainerError", Message: err.Error()}}
		})
		return 0, false
	}
	logFile.Close()
	exited := make(chan struct{})
	startedAt := metav1.Now()
	id := fmt.Sprintf("mesh://%s-%s-%d", c.pod.pod.UID, c.spec.Name, c.status.RestartCount)
	c.pod.mu.Lock()
	c.process, c.exited = cmd.Process, exited
	c.status.State = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: startedAt}}
	c.status.ContainerID = id
	c.status.ImageID = "mesh-node-agent://" + c.spec.Image
	noProbes := c.spec.StartupProbe == nil
	c.status.Started = &noProbes
	c.status.Ready = c.spec.ReadinessProbe == nil && noProbes && !c.init
	c.pod.mu.Unlock()
	if ctx.Err() != nil {
		// Deleted while starting: stop saw no process yet.
		_ = cmd.Process.Kill()
	}
	c.pod.publish()
	c.logf("started (pid %d): %s", cmd.Process.Pid, strings.Join(spec.Argv, " "))

	probeCtx, stopProbes := context.WithCancel(ctx)
	go c.probe(probeCtx)
	waitErr := cmd.Wait()
	stopProbes()
	close(exited)
	code = cmd.ProcessState.ExitCode()
	signal := 0
	if status, isWait := cmd.ProcessState.Sys().(syscall.WaitStatus); isWait && status.Signaled() {
		signal = int(status.Signal())
		code = 128 + signal
	}
	reason := "Completed"
	if code != 0 {
		reason = "Error"
	}
	c.logf("exited with %d (%v)", code, waitErr)
	c.pod.mu.Lock()
	c.process = nil
	c.status.Ready = false
	falseValue := false
	c.status.Started = &falseValue
	c.status.State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode: int32(code), Signal: int32(signal), Reason: reason,
		StartedAt: startedAt, FinishedAt: metav1.Now(), ContainerID: id,
	}}
	c.pod.mu.Unlock()
	c.pod.publish()
	return code, true
}

func (c *containerRuntime) logPath(run int) string {
	return filepath.Join(c.pod.dir, "containers", c.spec.Name, strconv.Itoa(run)+".log")
}

// unmappedImage is an image reference the node's table does not know: the pod's form
// of an image pull error.
type unmappedImage struct{ ref, table string }

func (e *unmappedImage) Error() string {
	return fmt.Sprintf("image %q is not in the node's image table (%s)", e.ref, e.table)
}

// containerSpec resolves what the helper runs: command line from the image table,
// environment, mounts, namespaces and user.
func (c *containerRuntime) containerSpec() (*containerSpec, error) {
	table, err := loadImages(c.pod.p.cfg.images)
	if err != nil {
		return nil, err
	}
	img, found := table[c.spec.Image]
	if !found {
		return nil, &unmappedImage{ref: c.spec.Image, table: c.pod.p.cfg.images}
	}
	c.pod.mu.Lock()
	volumes := c.pod.volumes
	s := c.pod.sandbox
	podIP := c.pod.status.PodIP
	c.pod.mu.Unlock()
	resolved, err := c.resolveEnv(c.pod.ctx, podIP)
	if err != nil {
		return nil, err
	}
	values := map[string]string{}
	for _, variable := range resolved {
		values[variable.Name] = variable.Value
	}
	expandAll := func(words []string) []string {
		expanded := make([]string, len(words))
		for i, word := range words {
			expanded[i] = expand(word, values)
		}
		return expanded
	}
	argv, err := img.argv(expandAll(c.spec.Command), expandAll(c.spec.Args))
	if err != nil {
		return nil, err
	}
	spec := &containerSpec{
		NewPIDNS:   !c.pod.pod.Spec.HostPID,
		WorkingDir: c.spec.WorkingDir,
		Argv:       argv,
		Env:        c.environment(img, resolved),
		UID:        -1,
		GID:        -1,
	}
	if s != nil {
		spec.NetNS = s.path()
	}
	if user := runAsUser(c.pod.pod.Spec.SecurityContext, c.spec.SecurityContext); user != nil {
		spec.UID = *user
	}
	if group := runAsGroup(c.pod.pod.Spec.SecurityContext, c.spec.SecurityContext); group != nil {
		spec.GID = *group
	}
	for _, mount := range c.spec.VolumeMounts {
		source, ok := volumes.paths[mount.Name]
		if !ok {
			return nil, fmt.Errorf("volumeMount %q names no volume of the pod", mount.Name)
		}
		if mount.SubPath != "" {
			if strings.Contains(mount.SubPath, "..") || filepath.IsAbs(mount.SubPath) {
				return nil, fmt.Errorf("volumeMount %q: subPath %q must be a relative path without '..'", mount.Name, mount.SubPath)
			}
			source = filepath.Join(source, mount.SubPath)
			if _, err := os.Stat(source); err != nil {
				if err := os.MkdirAll(source, 0o755); err != nil {
					return nil, err
				}
			}
		}
		spec.Mounts = append(spec.Mounts, mountSpec{Source: source, Target: mount.MountPath, ReadOnly: mount.ReadOnly})
	}
	return spec, nil
}

// environment is the container's environment: its spec's (resolveEnv), PATH and
// HOSTNAME as a runtime sets them, and the API server's address as the node gives it.
func (c *containerRuntime) environment(img image, resolved []corev1.EnvVar) []string {
	values := map[string]string{}
	var order []string
	set := func(name, value string) {
		if _, seen := values[name]; !seen {
			order = append(order, name)
		}
		values[name] = value
	}
	hostname := c.pod.pod.Name
	if c.pod.pod.Spec.HostNetwork {
		hostname = c.pod.p.cfg.nodeName
	}
	set("PATH", strings.Join(append(append([]string{}, img.Path...), "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"), ":"))
	set("HOSTNAME", hostname)
	if address := c.pod.p.cfg.apiServer; address != "" {
		host, port, _ := splitHostPort(address)
		set("KUBERNETES_SERVICE_HOST", host)
		set("KUBERNETES_SERVICE_PORT", port)
		set("KUBERNETES_SERVICE_PORT_HTTPS", port)
		set("KUBERNETES_PORT", "tcp://"+address)
		set("KUBERNETES_PORT_443_TCP", "tcp://"+address)
		set("KUBERNETES_PORT_443_TCP_PROTO", "tcp")
		set("KUBERNETES_PORT_443_TCP_ADDR", host)
		set("KUBERNETES_PORT_443_TCP_PORT", port)
	}
	for _, variable := range resolved {
		set(variable.Name, variable.Value)
	}
	env := make([]string, 0, len(order))
	for _, name := range order {
		env = append(env, name+"="+values[name])
	}
	return env
}

func runAsUser(pod *corev1.PodSecurityContext, container *corev1.SecurityContext) *int64 {
	if container != nil && container.RunAsUser != nil {
		return container.RunAsUser
	}
	if pod != nil {
		return pod.RunAsUser
	}
	return nil
}

func runAsGroup(pod *corev1.PodSecurityContext, container *corev1.SecurityContext) *int64 {
	if container != nil && container.RunAsGroup != nil {
		return container.RunAsGroup
	}
	if pod != nil {
		return pod.RunAsGroup
	}
	return nil
}

// stop ends the current run: SIGTERM, then SIGKILL after grace; returns once it exited.
func (c *containerRuntime) stop(grace time.Duration) {
	c.pod.mu.Lock()
	process, exited := c.process, c.exited
	c.pod.mu.Unlock()
	if process == nil {
		return
	}
	if grace > 0 {
		_ = process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
			return
		case <-time.After(grace):
		}
	}
	_ = process.Kill()
	<-exited
}

func splitHostPort(address string) (string, string, error) {
	index := strings.LastIndex(address, ":")
	if index < 0 {
		return address, "", fmt.Errorf("no port in %q", address)
	}
	return strings.Trim(address[:index], "[]"), address[index+1:], nil
}
