package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/sidecarhq/sidecar/api"
)

// killGrace is how long a command gets between SIGTERM and SIGKILL once its
// lock or leadership is lost: long enough for a clean shutdown, short enough
// that two holders do not overlap for long. A variable for tests.
var killGrace = 5 * time.Second

// holdEvent is one line of a hold stream, reduced to what lock and elect
// need, or the error that ended the stream.
type holdEvent struct {
	held  bool
	token uint64
	other string // who holds it instead, when known
	err   error
}

// holdSpec describes one connection-bound hold for runHeld.
type holdSpec struct {
	kind    string // "lock" or "election", for messages
	name    string
	timeout time.Duration // 0: wait forever
	env     []string      // extra environment of the command
	cmd     []string
	// open starts the hold; next reads its next event.
	open func(ctx context.Context) (next func() holdEvent, close func(), err error)
}

func cmdLock(ctx context.Context, s *streams, args []string) error {
	fs := newFlagSet("lock")
	addr := addrFlag(fs)
	ttl := fs.Duration("ttl", 0, "TTL of the hold's lease (default: the agent's session TTL)")
	value := fs.String("value", "", "`value` stored with the lock, shown to others")
	timeout := fs.Duration("timeout", 0, "give up if the lock is not acquired within `duration` (default: wait forever)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return flagError(s, fs, err)
	}
	name, cmd, err := holdArgs(fs.Name(), args, pos)
	if err != nil {
		return err
	}
	if *ttl < 0 || *timeout < 0 {
		return usageErrorf("lock: --ttl and --timeout must be positive")
	}
	c, err := newClient(addr)
	if err != nil {
		return err
	}
	req := api.LockRequest{Value: *value}
	if *ttl > 0 {
		req.TTL = ttl.String()
	}
	return runHeld(ctx, s, holdSpec{
		kind: "lock", name: name, timeout: *timeout, cmd: cmd,
		env: []string{"SIDECAR_LOCK=" + name},
		open: func(ctx context.Context) (func() holdEvent, func(), error) {
			st, err := c.HoldLock(ctx, name, req)
			if err != nil {
				return nil, nil, err
			}
			next := func() holdEvent {
				r, err := st.Next()
				ev := holdEvent{held: r.Held, token: r.Token, err: err}
				if r.Holder != nil {
					ev.other = r.Holder.Node
				}
				return ev
			}
			return next, func() { st.Close() }, nil
		},
	})
}

func cmdElect(ctx context.Context, s *streams, args []string) error {
	fs := newFlagSet("elect")
	addr := addrFlag(fs)
	value := fs.String("value", "", "`value` the leader publishes, usually host:port (required)")
	candidate := fs.String("candidate", "", "candidate `id` (default HOSTNAME-PID)")
	service := fs.String("service", "", "campaign only while the local instance `id` passes its checks")
	ttl := fs.Duration("ttl", 0, "TTL of the candidacy's lease (default: the agent's session TTL)")
	timeout := fs.Duration("timeout", 0, "give up if not elected within `duration` (default: wait forever)")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return flagError(s, fs, err)
	}
	name, cmd, err := holdArgs(fs.Name(), args, pos)
	if err != nil {
		return err
	}
	if *value == "" {
		return usageErrorf("elect: --value is required")
	}
	if *ttl < 0 || *timeout < 0 {
		return usageErrorf("elect: --ttl and --timeout must be positive")
	}
	if *candidate == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("elect: host name for the default candidate: %w (set --candidate)", err)
		}
		*candidate = h + "-" + strconv.Itoa(os.Getpid())
	}
	c, err := newClient(addr)
	if err != nil {
		return err
	}
	req := api.CampaignRequest{Candidate: *candidate, Value: *value, Service: *service}
	if *ttl > 0 {
		req.TTL = ttl.String()
	}
	return runHeld(ctx, s, holdSpec{
		kind: "election", name: name, timeout: *timeout, cmd: cmd,
		env: []string{"SIDECAR_ELECTION=" + name, "SIDECAR_CANDIDATE=" + *candidate},
		open: func(ctx context.Context) (func() holdEvent, func(), error) {
			st, err := c.HoldCampaign(ctx, name, req)
			if err != nil {
				return nil, nil, err
			}
			next := func() holdEvent {
				r, err := st.Next()
				ev := holdEvent{held: r.Leader, token: r.Token, err: err}
				if r.Current != nil {
					ev.other = r.Current.Candidate
					if ev.other == "" {
						ev.other = r.Current.Node
					}
				}
				return ev
			}
			return next, func() { st.Close() }, nil
		},
	})
}

// holdArgs splits "NAME [flags] -- CMD ARGS" once flags are parsed: pos is
// every positional argument, the command being those after "--".
func holdArgs(sub string, args, pos []string) (string, []string, error) {
	nCmd := 0
	for i, a := range args {
		if a == "--" {
			nCmd = len(args) - i - 1
			break
		}
	}
	names := pos[:len(pos)-nCmd]
	switch {
	case len(names) == 0:
		return "", nil, usageErrorf("%s: missing NAME", sub)
	case len(names) > 1:
		return "", nil, usageErrorf("%s: unexpected argument %q (put the command after --)", sub, names[1])
	case nCmd == 0:
		return "", nil, usageErrorf("%s: missing command: sidecar %s NAME -- CMD [ARGS...]", sub, sub)
	}
	return names[0], pos[len(pos)-nCmd:], nil
}

// runHeld acquires the hold, runs the command while it lasts and releases it
// when the command ends. The exit code is the command's, or 1 when the hold
// was lost (the command is stopped then) or never acquired.
func runHeld(ctx context.Context, s *streams, h holdSpec) error {
	// The connection must outlive ctx: on SIGINT the command is stopped
	// first and the hold released after, never the other way round, so two
	// holders cannot overlap.
	connCtx, closeConn := context.WithCancel(context.WithoutCancel(ctx))
	defer closeConn()

	events := make(chan holdEvent)
	go func() {
		send := func(ev holdEvent) bool {
			select {
			case events <- ev:
				return true
			case <-connCtx.Done():
				return false
			}
		}
		next, closeStream, err := h.open(connCtx)
		if err != nil {
			send(holdEvent{err: err})
			return
		}
		defer closeStream()
		// Closing the stream on connCtx makes a blocked next return.
		stop := context.AfterFunc(connCtx, closeStream)
		defer stop()
		for {
			ev := next()
			if !send(ev) || ev.err != nil {
				return
			}
		}
	}()

	// Wait for the hold.
	var timeout <-chan time.Time
	if h.timeout > 0 {
		t := time.NewTimer(h.timeout)
		defer t.Stop()
		timeout = t.C
	}
	var token uint64
	waitingSaid := false
	for token == 0 {
		select {
		case ev := <-events:
			switch {
			case ev.err != nil:
				return fmt.Errorf("%s %s: %w", h.kind, h.name, streamErr(ev.err))
			case ev.held:
				if ev.token == 0 {
					return fmt.Errorf("%s %s: agent granted it without a fencing token", h.kind, h.name)
				}
				token = ev.token
			case !waitingSaid:
				waitingSaid = true
				by := ""
				if ev.other != "" {
					by = " (held by " + ev.other + ")"
				}
				fmt.Fprintf(s.stderr, "sidecar: waiting for %s %s%s\n", h.kind, h.name, by)
			}
		case <-timeout:
			return fmt.Errorf("%s %s: not acquired within %v", h.kind, h.name, h.timeout)
		case <-ctx.Done():
			return fmt.Errorf("%s %s: interrupted while waiting", h.kind, h.name)
		}
	}
	if h.kind == "lock" {
		fmt.Fprintf(s.stderr, "sidecar: holding lock %s, token %d\n", h.name, token)
	} else {
		fmt.Fprintf(s.stderr, "sidecar: leading election %s, token %d\n", h.name, token)
	}

	cmd := exec.Command(h.cmd[0], h.cmd[1:]...)
	cmd.Env = append(os.Environ(), h.env...)
	cmd.Env = append(cmd.Env, "SIDECAR_FENCING_TOKEN="+strconv.FormatUint(token, 10))
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s.stdin, s.stdout, s.stderr
	cmd.SysProcAttr = childProcAttr()
	// Background children of the command may keep our pipes open; do not
	// wait on them forever once the command itself exited.
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s %s: start %s: %w", h.kind, h.name, h.cmd[0], err)
	}
	exited := make(chan int, 1)
	go func() {
		err := cmd.Wait()
		exited <- childExitCode(cmd, err)
	}()

	var (
		lost      bool
		killAt    <-chan time.Time // SIGKILL deadline after a loss
		interrupt = ctx.Done()
	)
	for {
		select {
		case code := <-exited:
			closeConn() // release at once; the deferred call is a no-op
			if lost {
				// The loss was reported when it happened; one line is enough.
				return exitCode(exitFailure)
			}
			return exitCode(code)
		case ev := <-events:
			var why string
			switch {
			case ev.err != nil:
				why = streamLoss(ev.err)
			case !ev.held:
				why = "the agent reports it is no longer held"
			case ev.token != token:
				why = fmt.Sprintf("fencing token changed from %d to %d", token, ev.token)
			default:
				continue // a repeat of the current state
			}
			lost = true
			events = nil // nothing later can undo the loss
			fmt.Fprintf(s.stderr, "sidecar: lost %s %s (%s), stopping %s\n", h.kind, h.name, why, h.cmd[0])
			signalChild(cmd, syscall.SIGTERM)
			killAt = time.After(killGrace)
		case <-killAt:
			signalChild(cmd, syscall.SIGKILL)
			killAt = nil
		case <-interrupt:
			// Forward the shutdown and keep holding until the command is
			// gone; a second signal kills sidecar, and with it (through
			// Pdeathsig and the closed socket) the command and the hold.
			interrupt = nil
			signalChild(cmd, syscall.SIGTERM)
		}
	}
}

// streamLoss phrases why a hold stream ended while the command ran.
func streamLoss(err error) string {
	var se *api.StatusError
	if errors.As(err, &se) {
		return "the agent ended the hold: " + se.Message
	}
	return "connection to the agent broke: " + streamErr(err).Error()
}

// streamErr phrases a stream's end for users.
func streamErr(err error) error {
	if errors.Is(err, api.ErrStreamClosed) {
		return errors.New("the agent closed the stream")
	}
	return err
}
