package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// containerSpec is what the helper needs to become a container's process. The agent
// starts the helper already in a new mount namespace (and a new PID namespace unless the
// pod has hostPID), so whatever it mounts stays the container's.
type containerSpec struct {
	// NetNS is the network namespace to enter ("": the node's, for hostNetwork pods).
	NetNS      string      `json:"netns"`
	NewPIDNS   bool        `json:"newPidNamespace"`
	Mounts     []mountSpec `json:"mounts"`
	WorkingDir string      `json:"workingDir"`
	Argv       []string    `json:"argv"`
	Env        []string    `json:"env"`
	UID        int64       `json:"uid"` // -1: keep root
	GID        int64       `json:"gid"` // -1: keep root's
}

// mountSpec is one bind mount: a volume (or a path inside it) onto the container's path.
type mountSpec struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly"`
}

// runContainer sets the container up and executes its command; it returns only when it
// could not, after printing why (into the container's log, where `kubectl logs` shows it).
func runContainer(specFile string) {
	// Namespaces entered with setns belong to the thread; exec keeps this thread's.
	runtime.LockOSThread()
	if err := becomeContainer(specFile); err != nil {
		fmt.Fprintf(os.Stderr, "mesh-node-agent: starting the container: %v\n", err)
	}
}

func becomeContainer(specFile string) error {
	data, err := os.ReadFile(specFile)
	if err != nil {
		return err
	}
	var spec containerSpec
	if err := json.Unmarshal(data, &spec); err != nil {
		return fmt.Errorf("%s: %w", specFile, err)
	}
	// Mounts made here never reach the node; the node's later mounts (a new pod's
	// /run/netns entry) still reach the container, as HostToContainer propagation does.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("making / a slave mount: %w", err)
	}
	for _, m := range spec.Mounts {
		if err := bindMount(m); err != nil {
			return err
		}
	}
	if spec.NewPIDNS {
		if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("mounting /proc for the pod's PID namespace: %w", err)
		}
	}
	if spec.NetNS != "" {
		fd, err := unix.Open(spec.NetNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("opening the pod's network namespace %s: %w", spec.NetNS, err)
		}
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("entering the pod's network namespace %s: %w", spec.NetNS, err)
		}
		unix.Close(fd)
	}
	if spec.WorkingDir != "" {
		if err := os.MkdirAll(spec.WorkingDir, 0o755); err != nil {
			return err
		}
		if err := unix.Chdir(spec.WorkingDir); err != nil {
			return fmt.Errorf("changing to the working directory %s: %w", spec.WorkingDir, err)
		}
	}
	if spec.GID >= 0 {
		if err := unix.Setgroups([]int{int(spec.GID)}); err != nil {
			return err
		}
		if err := unix.Setresgid(int(spec.GID), int(spec.GID), int(spec.GID)); err != nil {
			return fmt.Errorf("runAsGroup %d: %w", spec.GID, err)
		}
	}
	if spec.UID >= 0 {
		if err := unix.Setresuid(int(spec.UID), int(spec.UID), int(spec.UID)); err != nil {
			return fmt.Errorf("runAsUser %d: %w", spec.UID, err)
		}
	}
	if err := unix.Exec(spec.Argv[0], spec.Argv, spec.Env); err != nil {
		return fmt.Errorf("executing %s: %w", spec.Argv[0], err)
	}
	return nil
}

// bindMount mounts a volume path onto the container path, creating the mount point
// (a directory, or an empty file for a file) when the node's filesystem lacks it.
func bindMount(m mountSpec) error {
	info, err := os.Stat(m.Source)
	if err != nil {
		return fmt.Errorf("volume path %s: %w", m.Source, err)
	}
	if info.IsDir() {
		if err := os.MkdirAll(m.Target, 0o755); err != nil {
			return fmt.Errorf("mount point %s: %w", m.Target, err)
		}
	} else if _, err := os.Stat(m.Target); err != nil {
		if err := os.MkdirAll(filepath.Dir(m.Target), 0o755); err != nil {
			return fmt.Errorf("mount point %s: %w", m.Target, err)
		}
		file, err := os.OpenFile(m.Target, os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return fmt.Errorf("mount point %s: %w", m.Target, err)
		}
		file.Close()
	}
	if err := unix.Mount(m.Source, m.Target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("mounting %s on %s: %w", m.Source, m.Target, err)
	}
	if m.ReadOnly {
		flags := uintptr(unix.MS_BIND | unix.MS_REMOUNT | unix.MS_RDONLY)
		if err := unix.Mount("", m.Target, "", flags, ""); err != nil {
			return fmt.Errorf("making %s read-only: %w", m.Target, err)
		}
	}
	return nil
}
