package fsm_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/sidecarhq/sidecar/fsm"
)

// Names and ids at each edge of what they allow: the first and last letter
// and digit, and the characters just outside those ranges.
func TestValidNameAndID_edges(t *testing.T) {
	for _, tc := range []struct {
		s        string
		name, id bool
	}{
		{"a", true, true}, {"z", true, true}, {"A", true, true}, {"Z", true, true},
		{"0", true, true}, {"9", true, true}, {"a-b", true, true},
		{"`", false, false}, {"{", false, false}, {"@", false, true}, {"[", false, false},
		{"/", false, false}, {":", false, true}, {".", false, true}, {"_", false, true},
		{"-a", false, true}, {"a-", false, true}, {"", false, false},
		{strings.Repeat("n", 63), true, true}, {strings.Repeat("n", 64), false, true},
		{strings.Repeat("i", fsm.MaxIDLen), false, true}, {strings.Repeat("i", fsm.MaxIDLen+1), false, false},
	} {
		if got := fsm.ValidName(tc.s); got != tc.name {
			t.Errorf("ValidName(%.10q, %d bytes) = %v, want %v", tc.s, len(tc.s), got, tc.name)
		}
		if got := fsm.ValidID(tc.s); got != tc.id {
			t.Errorf("ValidID(%.10q, %d bytes) = %v, want %v", tc.s, len(tc.s), got, tc.id)
		}
	}
}

// An instance at each limit is registered; one past it is refused and
// changes nothing.
func TestFSM_RegisterInstance_limits(t *testing.T) {
	n := func(k int, f func(i int) string) []string {
		out := make([]string, k)
		for i := range out {
			out[i] = f(i)
		}
		return out
	}
	meta := func(k int, key string) map[string]string {
		m := map[string]string{key: "v"}
		for i := len(m); i < k; i++ {
			m[fmt.Sprint("k", i)] = "v"
		}
		return m
	}
	checks := func(k int) []fsm.Check {
		out := make([]fsm.Check, k)
		for i := range out {
			out[i] = ttlCheck(fmt.Sprint("c", i))
		}
		return out
	}
	for _, tc := range []struct {
		name string
		mod  func(in *fsm.Instance)
		ok   bool
	}{
		{"port 0", func(in *fsm.Instance) { in.Port = 0 }, true},
		{"port 65535", func(in *fsm.Instance) { in.Port = 65535 }, true},
		{"port 65536", func(in *fsm.Instance) { in.Port = 65536 }, false},
		{"max tags", func(in *fsm.Instance) { in.Tags = n(fsm.MaxTags, func(i int) string { return fmt.Sprint("t", i) }) }, true},
		{"too many tags", func(in *fsm.Instance) { in.Tags = n(fsm.MaxTags+1, func(i int) string { return fmt.Sprint("t", i) }) }, false},
		{"tag of 63", func(in *fsm.Instance) { in.Tags = []string{strings.Repeat("t", 63)} }, true},
		{"tag of 64", func(in *fsm.Instance) { in.Tags = []string{strings.Repeat("t", 64)} }, false},
		{"max meta", func(in *fsm.Instance) { in.Meta = meta(fsm.MaxMeta, "k") }, true},
		{"too much meta", func(in *fsm.Instance) { in.Meta = meta(fsm.MaxMeta+1, "k") }, false},
		{"meta key at the limit", func(in *fsm.Instance) { in.Meta = meta(1, strings.Repeat("k", fsm.MaxIDLen)) }, true},
		{"meta key too long", func(in *fsm.Instance) { in.Meta = meta(1, strings.Repeat("k", fsm.MaxIDLen+1)) }, false},
		{"max checks", func(in *fsm.Instance) { in.Checks = checks(fsm.MaxChecks) }, true},
		{"too many checks", func(in *fsm.Instance) { in.Checks = checks(fsm.MaxChecks + 1) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, regNode("n1"))
			c := regInst("n1", "web-1", "web")
			tc.mod(&c.Instance)
			if tc.ok {
				h.ok(c)
				return
			}
			requireUnchanged(t, h, c, fsm.ErrInvalid)
		})
	}
}
