package httpapi

import (
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// Every route registered has exactly one entry in the permissions table,
// and every entry is a route the mux answers with that very pattern: the
// table cannot name a route that does not exist (a check that guards
// nothing) nor miss one (handleHTTP would panic, but only on the routes a
// build registers: /metrics is conditional, so it is built with one).
func TestPermissions_coverRoutes(t *testing.T) {
	s := New(Config{Gatherer: prometheus.NewRegistry()}, nil, nil, nil)
	seen := map[string]bool{}
	for _, p := range s.patterns {
		if seen[p] {
			t.Errorf("route %q registered twice", p)
		}
		seen[p] = true
		if _, ok := permissions[p]; !ok {
			t.Errorf("route %q has no permission entry", p)
		}
	}
	wildcard := regexp.MustCompile(`\{([a-z_]+)\}`)
	for pattern, p := range permissions {
		if !seen[pattern] {
			t.Errorf("permission entry %q is no registered route", pattern)
			continue
		}
		// A concrete request of the pattern reaches it, not another.
		method, path, _ := cut(pattern)
		// {$} ends a pattern exactly there: the request's path stops too.
		req := httptest.NewRequest(method, strings.ReplaceAll(wildcard.ReplaceAllString(path, "x$1"), "{$}", ""), nil)
		if _, got := s.mux.Handler(req); got != pattern {
			t.Errorf("%s %s is routed to %q, want %q", method, req.URL.Path, got, pattern)
		}
		if p.from == fromPath && !wildcard.MatchString(path) {
			t.Errorf("%q takes its name from the path, which has none", pattern)
		}
		if p.from == fromPath && !regexp.MustCompile(`\{name\}`).MatchString(path) {
			t.Errorf("%q takes its name from {name}, which it lacks", pattern)
		}
		if !p.open && p.res == "" {
			t.Errorf("%q names no resource", pattern)
		}
	}
}

func cut(pattern string) (method, path string, ok bool) {
	for i := 0; i < len(pattern); i++ {
		if pattern[i] == ' ' {
			return pattern[:i], pattern[i+1:], true
		}
	}
	return "", pattern, false
}

// A caller's bucket refuses past its burst and says when to retry; others
// are not affected; an empty bucket refills at the rate.
func TestWriteLimiter_perCaller(t *testing.T) {
	l := newWriteLimiter(rate.Limit(2), 3)
	now := time.Unix(1000, 0)
	for i := 0; i < 3; i++ {
		if ok, _ := l.take("a", now); !ok {
			t.Fatalf("write %d within the burst refused", i)
		}
	}
	ok, retry := l.take("a", now)
	if ok || retry <= 0 || retry > 500*time.Millisecond {
		t.Fatalf("past the burst: ok %v retry %v, want refused with retry in (0, 500ms]", ok, retry)
	}
	if ok, _ := l.take("b", now); !ok {
		t.Fatal("another caller refused while a is limited")
	}
	if ok, _ := l.take("a", now.Add(retry)); !ok {
		t.Fatal("refused after the retry time it was told")
	}
	if newWriteLimiter(0, 10) != nil || newWriteLimiter(rate.Inf, 10) != nil {
		t.Fatal("a zero or infinite rate should limit nothing")
	}
}

// The map of buckets stays bounded: idle full buckets go first, else the
// least recently used.
func TestWriteLimiter_bounded(t *testing.T) {
	l := newWriteLimiter(rate.Limit(1000), 10)
	now := time.Unix(1000, 0)
	for i := 0; i < maxLimiters; i++ {
		l.take(string(rune('a'+i%26))+time.Duration(i).String(), now)
	}
	if l.len() != maxLimiters {
		t.Fatalf("%d buckets, want %d", l.len(), maxLimiters)
	}
	// Still busy (within the refill time): one more evicts exactly one.
	l.take("new", now)
	if l.len() != maxLimiters {
		t.Fatalf("%d buckets after one more, want %d", l.len(), maxLimiters)
	}
	// A second later all are refilled: a newcomer sweeps the idle ones.
	l.take("later", now.Add(time.Second))
	if l.len() > 2 {
		t.Fatalf("%d buckets after the idle ones could go, want at most 2", l.len())
	}
}
