package main

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	utilexec "k8s.io/utils/exec"
)

// enter is a command run inside the container's namespaces (mount, network, PID) with
// its environment and working directory, by util-linux nsenter (a Go program cannot
// enter another mount namespace once it has threads).
func (c *containerRuntime) enter(ctx context.Context, argv []string) (*exec.Cmd, error) {
	if len(argv) == 0 {
		return nil, errdefs.InvalidInput("no command given")
	}
	c.pod.mu.Lock()
	process := c.process
	c.pod.mu.Unlock()
	if process == nil {
		return nil, errdefs.InvalidInput("container " + c.spec.Name + " is not running")
	}
	spec, err := c.containerSpec()
	if err != nil {
		return nil, err
	}
	args := []string{"--target", strconv.Itoa(process.Pid), "--mount", "--net", "--wd"}
	if spec.NewPIDNS {
		args = append(args, "--pid")
	}
	if spec.UID >= 0 {
		args = append(args, "--setuid", strconv.FormatInt(spec.UID, 10))
	}
	if spec.GID >= 0 {
		args = append(args, "--setgid", strconv.FormatInt(spec.GID, 10))
	}
	command := exec.CommandContext(ctx, "nsenter", append(append(args, "--"), argv...)...)
	command.Env = spec.Env
	command.WaitDelay = time.Second
	return command, nil
}

// exec runs `kubectl exec`'s command; its exit status reaches kubectl.
func (c *containerRuntime) exec(ctx context.Context, argv []string, attach api.AttachIO) error {
	if attach.TTY() {
		return errdefs.InvalidInput("exec with a TTY (-t) is not supported by the test node agent; run without -t")
	}
	command, err := c.enter(ctx, argv)
	if err != nil {
		return err
	}
	if stdin := attach.Stdin(); stdin != nil {
		command.Stdin = stdin
	}
	if stdout := attach.Stdout(); stdout != nil {
		command.Stdout = stdout
		defer stdout.Close()
	}
	if stderr := attach.Stderr(); stderr != nil {
		command.Stderr = stderr
		defer stderr.Close()
	}
	err = command.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return utilexec.CodeExitError{Err: err, Code: exit.ExitCode()}
	}
	return err
}

// logs is the output of the current run, or of the previous one; followed until the
// run ends when asked.
func (c *containerRuntime) logs(ctx context.Context, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	c.pod.mu.Lock()
	run := int(c.status.RestartCount)
	exited := c.exited
	running := c.process != nil
	c.pod.mu.Unlock()
	if opts.Previous {
		if run == 0 {
			return nil, errdefs.InvalidInput("previous terminated container " + c.spec.Name + " not found")
		}
		run--
		running = false
	}
	file, err := os.Open(c.logPath(run))
	if err != nil {
		return nil, errdefs.NotFoundf("no logs for container %s yet", c.spec.Name)
	}
	if opts.Tail > 0 {
		if err := seekToTail(file, opts.Tail); err != nil {
			file.Close()
			return nil, err
		}
	}
	var reader io.ReadCloser = file
	if opts.Follow && running {
		reader = &follower{file: file, ctx: ctx, exited: exited}
	}
	if opts.LimitBytes > 0 {
		reader = struct {
			io.Reader
			io.Closer
		}{io.LimitReader(reader, int64(opts.LimitBytes)), reader}
	}
	return reader, nil
}

// seekToTail positions file at the start of its last n lines.
func seekToTail(file *os.File, n int) error {
	data, err := io.ReadAll(file)
	if err != nil {
		return err
	}
	offset := len(data)
	if offset > 0 && data[offset-1] == '\n' {
		offset--
	}
	for lines := 0; offset > 0; offset-- {
		if data[offset-1] == '\n' {
			lines++
			if lines == n {
				break
			}
		}
	}
	_, err = file.Seek(int64(offset), io.SeekStart)
	return err
}

// follower reads a log as it grows, until the run ends (and all is read) or the client
// goes away.
type follower struct {
	file   *os.File
	ctx    context.Context
	exited chan struct{}
}

func (f *follower) Read(buffer []byte) (int, error) {
	for {
		n, err := f.file.Read(buffer)
		if n > 0 || (err != nil && err != io.EOF) {
			return n, err
		}
		select {
		case <-f.ctx.Done():
			return 0, io.EOF
		case <-f.exited:
			n, err := f.file.Read(buffer)
			if n == 0 && err == nil {
				err = io.EOF
			}
			return n, err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (f *follower) Close() error { return f.file.Close() }
