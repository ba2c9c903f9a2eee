package healthcheck

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecarhq/sidecar/fsm"
)

// ErrConfig wraps every reason New rejects a Config.
var ErrConfig = errors.New("healthcheck: invalid config")

// Config configures a Runner. Start from DefaultConfig and override fields.
type Config struct {
	// Interval is the interval of a check defined without one (and, for TTL
	// checks, the delay before a failed notification is retried).
	Interval time.Duration
	// Timeout bounds one run of a check defined without a timeout. It is
	// capped at the check's interval.
	Timeout time.Duration
	// MinInterval is the shortest interval and TTL a check runs with; a
	// check asking for less gets MinInterval.
	MinInterval time.Duration
	// OutputLimit caps the output kept for a check, in bytes. At most
	// fsm.MaxOutputLen, which the registry refuses beyond.
	OutputLimit int
	// ExecEnabled allows exec checks. Without it an exec check is refused by
	// Sync and stays in the status the registry holds (critical when new).
	ExecEnabled bool
	// InitialDelay returns the delay before the first run of a check with
	// the given interval; a result outside [0, interval] is clamped. Nil
	// picks uniformly at random in [0, interval).
	InitialDelay func(interval time.Duration) time.Duration
	// Logger receives the runner's logs; nil discards them.
	Logger *slog.Logger
	// Registerer receives the runner's metrics; nil keeps them private.
	Registerer prometheus.Registerer
}

// DefaultConfig returns the configuration for production.
func DefaultConfig() Config {
	return Config{
		// 10s: Consul's customary interval. A dead service is noticed
		// within 10s plus the failure threshold, while 500 checks cost 50
		// probes a second. Checks that need faster failover set their own.
		Interval: 10 * time.Second,
		// 5s: a health endpoint answers in milliseconds; one that takes
		// seconds is overloaded and rightly critical. Half the default
		// interval, so a hung target is cut well before the next run.
		Timeout: 5 * time.Second,
		// 1s (Consul's minimum): below that a misconfigured check would
		// spend more of the service's and the sidecar's time than the
		// service itself, and Raft writes of flapping checks would follow.
		MinInterval: time.Second,
		// 4 KiB: what the registry accepts (fsm.MaxOutputLen); enough for
		// an error message or the tail of a script's output.
		OutputLimit: fsm.MaxOutputLen,
		// Exec checks are part of SPEC.md's registrations. Running argv
		// from a registration means anyone who can reach the local HTTP
		// API runs commands as the sidecar's user: operators who expose it
		// more widely should turn this off.
		ExecEnabled: true,
		// Random in [0, interval): see InitialDelay.
		InitialDelay: nil,
	}
}

// TestConfig is DefaultConfig for tests: intervals down to 1ms and no
// initial delay, so that a check runs at once and tests are deterministic.
func TestConfig() Config {
	c := DefaultConfig()
	c.MinInterval = time.Millisecond
	c.InitialDelay = func(time.Duration) time.Duration { return 0 }
	return c
}

// normalize checks a Config and returns it with defaults filled in.
func (c Config) normalize() (Config, error) {
	if c.Interval <= 0 {
		return c, fmt.Errorf("%w: interval %v must be positive", ErrConfig, c.Interval)
	}
	if c.Timeout <= 0 {
		return c, fmt.Errorf("%w: timeout %v must be positive", ErrConfig, c.Timeout)
	}
	if c.MinInterval <= 0 || c.MinInterval > c.Interval {
		return c, fmt.Errorf("%w: min interval %v must be positive and at most the interval %v", ErrConfig, c.MinInterval, c.Interval)
	}
	if c.OutputLimit <= 0 || c.OutputLimit > fsm.MaxOutputLen {
		return c, fmt.Errorf("%w: output limit %d must be between 1 and %d", ErrConfig, c.OutputLimit, fsm.MaxOutputLen)
	}
	if c.InitialDelay == nil {
		c.InitialDelay = randomDelay
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Registerer == nil {
		c.Registerer = prometheus.NewRegistry()
	}
	return c, nil
}

// randomDelay is uniform in [0, interval).
func randomDelay(interval time.Duration) time.Duration {
	if interval <= 0 {
		return 0
	}
	return rand.N(interval)
}
