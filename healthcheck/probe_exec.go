//go:build unix

package healthcheck

import (
	"context"
	"errors"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/sidecarhq/sidecar/fsm"
)

// execWaitDelay bounds how long a run waits, once its command has exited or
// been killed, for the output pipes to close: a child that escaped the
// process group (setsid) and kept them open cannot hold the check.
const execWaitDelay = time.Second

// execProber runs argv, without a shell, as the leader of its own process
// group, and kills the group at the timeout and after the command exits.
type execProber struct {
	argv    []string
	timeout time.Duration
	tail    tailWriter
}

func newExecProber(argv []string, timeout time.Duration) (*execProber, error) {
	if len(argv) == 0 || argv[0] == "" {
		return nil, errors.New("empty command")
	}
	return &execProber{argv: argv, timeout: timeout}, nil
}

func (p *execProber) probe(ctx context.Context, out []byte, limit int) ([]byte, string) {
	cmd := exec.CommandContext(ctx, p.argv[0], p.argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// The group's id is the leader's pid (Setpgid with Pgid 0).
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = execWaitDelay
	p.tail.reset(limit)
	cmd.Stdout = &p.tail
	cmd.Stderr = &p.tail
	if err := cmd.Start(); err != nil {
		return append(out, err.Error()...), fsm.StatusCritical
	}
	err := cmd.Wait()
	// Whatever the command left running in its group goes with it. While
	// the group has members its id is not handed out as a pid again; once
	// empty, it could be reused only if the pid space wrapped around
	// between Wait and here.
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)

	status := fsm.StatusCritical
	code := -1
	if cmd.ProcessState != nil {
		code = cmd.ProcessState.ExitCode()
	}
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		out = append(out, "timed out after "...)
		out = append(out, p.timeout.String()...)
	case code == 0:
		status = fsm.StatusPassing
	case code == 1:
		status = fsm.StatusWarning
	case code > 1:
		if len(p.tail.buf) == 0 {
			out = append(out, "exit status "...)
			out = strconv.AppendInt(out, int64(code), 10)
		}
	case err != nil:
		// Killed by a signal, or the wait failed.
		out = append(out, err.Error()...)
	}
	if len(out) > 0 && len(p.tail.buf) > 0 {
		out = append(out, "; output:\n"...)
	}
	if n := limit - len(out); n > 0 {
		out = append(out, p.tail.tail(n)...)
	}
	return truncate(out, limit), status
}
