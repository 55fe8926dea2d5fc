package main

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// A simulated node is a machine of its own to the pods on it: besides its network
// namespace (which the tests give the agent), it has its own mount namespace, where the
// directories a node keeps to itself are the node's (nodeDirs, from --host-root), and its
// own PID namespace, where /proc shows only its processes (what a hostPID pod such as
// istio-cni's scans). So the kubelet, the CNI plugins it runs and the pods' hostPath
// volumes all see the same node-local /etc/cni, /run/netns, /run/istio-cni..., as on a
// real machine. The agent starts itself again inside those namespaces:
//
//	mesh-node-agent ...            (the tests' process: forwards signals, exits with it)
//	└─ mesh-node-agent node-init   (PID 1 of the node: mounts, reaps orphans)
//	   └─ mesh-node-agent serve    (the kubelet; pods' processes are its children)
//
// When the outer process dies, the kernel kills the node's PID 1 (parent-death signal)
// and with it every process of the node; its mounts, and so its pods' network
// namespaces, go with the mount namespace.

// nodeDirs are the directories each node has of its own (HOST-ROOT/<dir> mounted on
// <dir>); everything else is the machine's, shared by every node. /run holds the pods'
// network namespaces and the sockets of node daemons (istio-cni, ztunnel).
var nodeDirs = []string{"/run", "/etc/cni", "/opt/cni", "/var/lib/cni", "/var/lib/kubelet"}

// startMachine runs node-init in new mount and PID namespaces and waits for it.
func startMachine(args []string) int {
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "mesh-node-agent: %v\n", err)
		return 1
	}
	cmd := exec.Command(self, append([]string{"node-init"}, args...)...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID,
		Pdeathsig:  syscall.SIGKILL,
	}
	return runForwardingSignals(cmd)
}

// nodeInit is PID 1 of the node: it makes the node's mounts, starts the agent and reaps
// every orphan until the agent exits.
func nodeInit(args []string, hostRoot string) int {
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "mesh-node-agent: setting up the node: %v\n", err)
		return 1
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fail(fmt.Errorf("making / private: %w", err))
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fail(fmt.Errorf("mounting the node's /proc: %w", err))
	}
	for _, dir := range nodeDirs {
		source := filepath.Join(hostRoot, dir)
		if err := os.MkdirAll(source, 0o755); err != nil {
			return fail(err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fail(err)
		}
		if err := unix.Mount(source, dir, "", unix.MS_BIND, ""); err != nil {
			return fail(fmt.Errorf("mounting the node's %s: %w", dir, err))
		}
	}
	if err := os.MkdirAll("/run/netns", 0o755); err != nil {
		return fail(err)
	}
	if err := unix.Mount("/run/netns", "/run/netns", "", unix.MS_BIND, ""); err != nil {
		return fail(fmt.Errorf("mounting the node's /run/netns: %w", err))
	}
	// Shared, so each pod's namespace mount reaches the containers (slaves of it).
	if err := unix.Mount("", "/run/netns", "", unix.MS_SHARED, ""); err != nil {
		return fail(fmt.Errorf("sharing /run/netns: %w", err))
	}
	self, err := os.Executable()
	if err != nil {
		return fail(err)
	}
	agent := exec.Command(self, append([]string{"serve"}, args...)...)
	agent.Stdout, agent.Stderr = os.Stdout, os.Stderr
	if err := agent.Start(); err != nil {
		return fail(err)
	}
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		for sig := range signals {
			_ = agent.Process.Signal(sig)
		}
	}()
	// Reap everything; the agent's own exit ends the node. (The agent's exec.Cmd waits
	// are for its own children, which are not ours: it reaps them itself.)
	for {
		var status unix.WaitStatus
		pid, err := unix.Wait4(-1, &status, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 1
		}
		if pid == agent.Process.Pid {
			if status.Signaled() {
				return 128 + int(status.Signal())
			}
			return status.ExitStatus()
		}
	}
}

func runForwardingSignals(cmd *exec.Cmd) int {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "mesh-node-agent: %v\n", err)
		return 1
	}
	go func() {
		for sig := range signals {
			_ = cmd.Process.Signal(sig)
		}
	}()
	_ = cmd.Wait()
	return cmd.ProcessState.ExitCode()
}
