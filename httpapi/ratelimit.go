package httpapi

import (
	"fmt"
	"math"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/sidecarhq/sidecar/acl"
)

// maxLimiters bounds the write limiters kept at once: one per token or
// anonymous client address, so a caller inventing addresses cannot grow the
// map without bound.
const maxLimiters = 16384

// writeLimiter is a token bucket per caller for writes (SPEC: Limits,
// write rate per token). Buckets are made on first use and dropped once
// idle long enough to have refilled, when a fresh bucket is the same.
type writeLimiter struct {
	limit rate.Limit
	burst int

	mu   sync.Mutex
	byID map[string]*limiterEntry
}

type limiterEntry struct {
	lim  *rate.Limiter
	last time.Time
}

func newWriteLimiter(limit rate.Limit, burst int) *writeLimiter {
	if limit <= 0 || limit == rate.Inf {
		return nil
	}
	return &writeLimiter{limit: limit, burst: max(burst, 1), byID: map[string]*limiterEntry{}}
}

// take spends one write of key's bucket; when empty, it spends nothing and
// says how long until one is there.
func (l *writeLimiter) take(key string, now time.Time) (ok bool, retry time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.byID[key]
	if e == nil {
		if len(l.byID) >= maxLimiters {
			l.evict(now)
		}
		e = &limiterEntry{lim: rate.NewLimiter(l.limit, l.burst)}
		l.byID[key] = e
	}
	e.last = now
	res := e.lim.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return false, d
	}
	return true, 0
}

// evict drops the buckets idle long enough to be full again; if none is,
// the least recently used one (its caller starts again with a full
// bucket, which the map bound is worth).
func (l *writeLimiter) evict(now time.Time) {
	refill := time.Duration(float64(l.burst) / float64(l.limit) * float64(time.Second))
	var oldest string
	var oldestAt time.Time
	for k, e := range l.byID {
		if now.Sub(e.last) >= refill {
			delete(l.byID, k)
			continue
		}
		if oldest == "" || e.last.Before(oldestAt) {
			oldest, oldestAt = k, e.last
		}
	}
	if len(l.byID) >= maxLimiters {
		delete(l.byID, oldest)
	}
}

// len is the number of buckets kept (tests).
func (l *writeLimiter) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.byID)
}

// rateLimited is a write refused by the limiter (429, Retry-After).
type rateLimited struct {
	retry time.Duration
	who   string
}

func (e *rateLimited) Error() string {
	return fmt.Sprintf("%s: %s wrote faster than the agent's write rate; retry after %v", errTooMany, e.who, e.retry.Round(time.Millisecond))
}

func (e *rateLimited) Unwrap() error { return errTooMany }

// retryAfter is the Retry-After header's whole seconds, at least 1.
func (e *rateLimited) retryAfter() string {
	return fmt.Sprint(max(1, int(math.Ceil(e.retry.Seconds()))))
}

// limitWrite spends one write of the caller's bucket: its token's, or for
// a request without token its client address's.
func (s *Server) limitWrite(r *http.Request, c *acl.Caller) error {
	if s.writes == nil {
		return nil
	}
	key, who := "", ""
	if c != nil && c.TokenID != "" {
		key, who = "token:"+c.TokenID, fmt.Sprintf("token %q", c.TokenID)
	} else {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			host = r.RemoteAddr
		}
		key, who = "addr:"+host, "address "+host
	}
	if ok, retry := s.writes.take(key, time.Now()); !ok {
		return &rateLimited{retry: retry, who: who}
	}
	return nil
}
