// Command fencedfile appends lines to a file while it holds a sidecar lock,
// and checks its fencing token with the servers before every append.
//
// A file cannot keep the highest fencing token it has seen and refuse
// writers with an older one, as a database row with a token column can. So
// a holder that was paused past its lease (a GC pause, a stopped VM, a
// partition that healed) and wakes up still believing it holds the lock
// would append after the next holder already did. The check closes that
// gap: just before each append, fencedfile asks the sidecar whether its
// token is still the live holder's (GET /v1/locks/{name}/fence, confirmed
// with a quorum) and appends only when it is. Watching the Mutex's Done
// channel stops the loop as soon as the session demotes itself.
//
// Usage:
//
//	fencedfile -file out.txt -lock out-file -lines 10 [-sidecar 127.0.0.1:7080]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/concurrency"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// errNotCurrent: the fence check said another holder has taken over.
var errNotCurrent = errors.New("fencing token no longer current")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("fencedfile", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("sidecar", envOr("SIDECAR_HTTP_ADDR", api.DefaultAddr), "the local sidecar's HTTP address")
	file := fs.String("file", "", "file to append to (required)")
	lock := fs.String("lock", "fencedfile", "lock name")
	lines := fs.Int("lines", 10, "lines to append")
	every := fs.Duration("every", 100*time.Millisecond, "pause between lines")
	ttl := fs.Duration("ttl", concurrency.DefaultTTL, "session lease TTL")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *file == "" {
		fmt.Fprintln(stderr, "fencedfile: -file is required")
		return 2
	}
	client, err := api.NewClient(*addr)
	if err != nil {
		fmt.Fprintln(stderr, "fencedfile:", err)
		return 2
	}
	client.Token = os.Getenv("SIDECAR_TOKEN")
	defer client.CloseIdleConnections()
	if err := appendFenced(ctx, client, *lock, *file, *lines, *every, *ttl, stdout); err != nil {
		fmt.Fprintln(stderr, "fencedfile:", err)
		return 1
	}
	return 0
}

// appendFenced takes the lock and appends n lines, each after a fence check.
func appendFenced(ctx context.Context, client *api.Client, lock, path string, n int, every, ttl time.Duration, stdout io.Writer) error {
	s, err := concurrency.NewSession(ctx, client, concurrency.WithTTL(ttl))
	if err != nil {
		return err
	}
	// Close revokes the lease: the next waiter gets the lock at once.
	defer s.Close(context.WithoutCancel(ctx))
	m := concurrency.NewMutex(s, lock)
	if err := m.Lock(ctx); err != nil {
		return err
	}
	defer m.Unlock(context.WithoutCancel(ctx))
	fmt.Fprintf(stdout, "holding %q with token %d\n", lock, m.Token())

	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	for i := 1; i <= n; i++ {
		select {
		case <-m.Done():
			return fmt.Errorf("lock lost before line %d: %w", i, m.Err())
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		// The check, then the append: nothing slow in between.
		current, now, err := m.Fence(ctx)
		if err != nil {
			return err
		}
		if !current {
			return fmt.Errorf("line %d: token %d, holder now %d: %w", i, m.Token(), now, errNotCurrent)
		}
		if _, err := fmt.Fprintf(f, "token=%d line=%d\n", m.Token(), i); err != nil {
			return err
		}
		if i < n {
			select {
			case <-time.After(every):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	if err := f.Sync(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "appended %d lines\n", n)
	return nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
