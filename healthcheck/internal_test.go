package healthcheck

import (
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/sidecarhq/sidecar/fsm"
)

func TestThresholds_observe(t *testing.T) {
	const P, W, C = fsm.StatusPassing, fsm.StatusWarning, fsm.StatusCritical
	for _, tc := range []struct {
		name    string
		s, f    int
		start   string
		results []string
		want    []string // status after each result
	}{
		{"defaults follow every result", 0, 0, C,
			[]string{P, W, C, P, C, W, P},
			[]string{P, W, C, P, C, W, P}},
		{"passing needs 3 in a row", 3, 1, C,
			[]string{P, P, C, P, P, W, P, P, P, P},
			[]string{C, C, C, C, C, W, W, W, P, P}},
		{"critical needs 2 in a row", 1, 2, P,
			[]string{C, P, C, C, C, P},
			[]string{P, P, P, C, C, P}},
		{"warnings count as failures", 1, 3, P,
			[]string{W, C, W, C},
			[]string{P, P, W, C}},
		{"a failing check follows the latest failure", 1, 2, P,
			[]string{W, W, C, W, C},
			[]string{P, W, C, W, C}},
		{"a warning breaks a run of passes", 2, 5, W,
			[]string{P, W, P, P},
			[]string{W, W, W, P}},
		{"start warning, critical needs the threshold", 1, 2, W,
			[]string{C, C},
			[]string{W, C}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			th := newThresholds(tc.s, tc.f)
			cur := tc.start
			for i, r := range tc.results {
				cur = th.observe(cur, r)
				if cur != tc.want[i] {
					t.Fatalf("after result %d (%s): %s, want %s", i, r, cur, tc.want[i])
				}
			}
		})
	}
}

func TestTruncate(t *testing.T) {
	for _, tc := range []struct {
		in    string
		limit int
		want  string
	}{
		{"hello", 10, "hello"},
		{"hello", 5, "hello"},
		{"hello", 3, "hel"},
		{"a€b", 2, "a"}, // € is 3 bytes
		{"a€b", 3, "a"},
		{"a€b", 4, "a€"},
		{"€€", 3, "€"},
		{"\xff\xff\xff\xff", 2, "\xff\xff"}, // not UTF-8: cut at the limit
	} {
		if got := string(truncate([]byte(tc.in), tc.limit)); got != tc.want {
			t.Errorf("truncate(%q, %d) = %q, want %q", tc.in, tc.limit, got, tc.want)
		}
	}
}

func TestTailWriter(t *testing.T) {
	var w tailWriter
	w.reset(8)
	for _, s := range []string{"ab", "cd", "efgh", "ij"} {
		w.Write([]byte(s))
	}
	if got := string(w.tail(8)); got != "cdefghij" {
		t.Errorf("tail = %q", got)
	}
	if got := string(w.tail(3)); got != "hij" {
		t.Errorf("tail(3) = %q", got)
	}
	w.Write([]byte(strings.Repeat("z", 20)))
	if got := string(w.tail(8)); got != "zzzzzzzz" {
		t.Errorf("tail after a long write = %q", got)
	}

	// A cut in a rune skips to the next whole one.
	w.reset(7)
	w.Write([]byte("x€€€"))
	got := w.tail(7)
	if !utf8.Valid(got) || string(got) != "€€" {
		t.Errorf("tail = %q, want two whole euros", got)
	}
	w.reset(100)
	w.Write([]byte("short"))
	if got := string(w.tail(100)); got != "short" {
		t.Errorf("tail = %q", got)
	}
}

func TestSpec_align(t *testing.T) {
	fast := &spec{interval: slackMinInterval - 1}
	slow := &spec{interval: slackMinInterval}
	for i := 0; i < 1000; i++ {
		at := time.Now().Add(time.Duration(i) * 7919 * time.Microsecond)
		if got := fast.align(at); !got.Equal(at) {
			t.Fatalf("interval below %v: align(%v) = %v, want it unchanged", slackMinInterval, at, got)
		}
		got := slow.align(at)
		if got.Before(at) || got.Sub(at) >= runSlack || got.Sub(slackEpoch)%runSlack != 0 {
			t.Fatalf("align(%v) = %v: not the next point of the %v grid", at, got, runSlack)
		}
		if again := slow.align(got); !again.Equal(got) {
			t.Fatalf("align moved a point of the grid: %v → %v", got, again)
		}
	}
}
