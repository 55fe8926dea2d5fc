package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// probe runs the container's probes for one run, as a kubelet's prober does: the startup
// probe first (failing it restarts the container), then liveness (failing restarts) and
// readiness (sets Ready).
func (c *containerRuntime) probe(ctx context.Context) {
	if startup := c.spec.StartupProbe; startup != nil {
		started := false
		c.every(ctx, startup, func(success bool, streak int) bool {
			switch {
			case success && streak >= threshold(startup.SuccessThreshold):
				started = true
				return false
			case !success && streak >= threshold(startup.FailureThreshold):
				c.restartForProbe(ctx, "startup", startup)
				return false
			}
			return true
		})
		if !started {
			return
		}
		c.update(func(s *corev1.ContainerStatus) {
			s.Started = &started
			s.Ready = c.spec.ReadinessProbe == nil && !c.init
		})
	}
	if c.init {
		return
	}
	if liveness := c.spec.LivenessProbe; liveness != nil {
		go c.every(ctx, liveness, func(success bool, streak int) bool {
			if !success && streak >= threshold(liveness.FailureThreshold) {
				c.restartForProbe(ctx, "liveness", liveness)
				return false
			}
			return true
		})
	}
	if readiness := c.spec.ReadinessProbe; readiness != nil {
		c.every(ctx, readiness, func(success bool, streak int) bool {
			c.pod.mu.Lock()
			was := c.status.Ready
			c.pod.mu.Unlock()
			ready := was
			if success && streak >= threshold(readiness.SuccessThreshold) {
				ready = true
			} else if !success && streak >= threshold(readiness.FailureThreshold) {
				ready = false
			}
			if ready != was {
				c.update(func(s *corev1.ContainerStatus) { s.Ready = ready })
			}
			return true
		})
	}
}

// every runs the probe each period after its initial delay and gives each result with
// the length of the current streak of equal results, until handle returns false.
func (c *containerRuntime) every(ctx context.Context, probe *corev1.Probe, handle func(success bool, streak int) bool) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(time.Duration(probe.InitialDelaySeconds) * time.Second):
	}
	period := time.Duration(threshold(probe.PeriodSeconds)) * time.Second
	if probe.PeriodSeconds == 0 {
		period = 10 * time.Second
	}
	last, streak := false, 0
	for {
		success := c.check(ctx, probe) == nil
		if success == last {
			streak++
		} else {
			last, streak = success, 1
		}
		if ctx.Err() != nil || !handle(success, streak) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(period):
		}
	}
}

func threshold(value int32) int {
	if value <= 0 {
		return 1
	}
	return int(value)
}

// restartForProbe stops the run a failed probe condemned; the run loop restarts it per
// the restartPolicy.
func (c *containerRuntime) restartForProbe(ctx context.Context, kind string, probe *corev1.Probe) {
	c.logf("%s probe failed; restarting the container", kind)
	grace := int64(30)
	if c.pod.pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = *c.pod.pod.Spec.TerminationGracePeriodSeconds
	}
	if probe.TerminationGracePeriodSeconds != nil {
		grace = *probe.TerminationGracePeriodSeconds
	}
	c.pod.mu.Lock()
	process, exited := c.process, c.exited
	c.pod.mu.Unlock()
	if process == nil {
		return
	}
	_ = process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(time.Duration(grace) * time.Second):
		_ = process.Kill()
	}
}

// check runs one probe; nil is success.
func (c *containerRuntime) check(ctx context.Context, probe *corev1.Probe) error {
	timeout := time.Duration(threshold(probe.TimeoutSeconds)) * time.Second
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c.pod.mu.Lock()
	podIP := c.pod.status.PodIP
	c.pod.mu.Unlock()
	switch {
	case probe.HTTPGet != nil:
		get := probe.HTTPGet
		port, err := c.port(get.Port)
		if err != nil {
			return err
		}
		host := get.Host
		if host == "" {
			host = podIP
		}
		scheme := "http"
		if get.Scheme == corev1.URISchemeHTTPS {
			scheme = "https"
		}
		url := fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host, strconv.Itoa(port)), get.Path)
		request, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		request.Header.Set("User-Agent", "kube-probe/1.37")
		for _, header := range get.HTTPHeaders {
			request.Header.Add(header.Name, header.Value)
		}
		client := &http.Client{Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, // kubelet probes do not verify either
			DisableKeepAlives: true,
		}}
		response, err := client.Do(request)
		if err != nil {
			return err
		}
		response.Body.Close()
		if response.StatusCode < 200 || response.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe answered %d", response.StatusCode)
		}
		return nil
	case probe.TCPSocket != nil:
		port, err := c.port(probe.TCPSocket.Port)
		if err != nil {
			return err
		}
		host := probe.TCPSocket.Host
		if host == "" {
			host = podIP
		}
		var dialer net.Dialer
		conn, err := dialer.DialContext(ctx, "tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			return err
		}
		return conn.Close()
	case probe.Exec != nil:
		command, err := c.enter(ctx, probe.Exec.Command)
		if err != nil {
			return err
		}
		return command.Run()
	default:
		return fmt.Errorf("probe kind not supported by the test node agent (gRPC)")
	}
}

// port resolves a probe's port: a number, or the name of one of the container's ports.
func (c *containerRuntime) port(port intstr.IntOrString) (int, error) {
	if port.Type == intstr.Int {
		return port.IntValue(), nil
	}
	for _, declared := range c.spec.Ports {
		if declared.Name == port.StrVal {
			return int(declared.ContainerPort), nil
		}
	}
	if number, err := strconv.Atoi(port.StrVal); err == nil {
		return number, nil
	}
	return 0, fmt.Errorf("the container has no port named %q", port.StrVal)
}
