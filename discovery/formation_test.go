package discovery

import "testing"

func TestQuorumSafe(t *testing.T) {
	cases := []struct {
		voters, alive, aliveAfter int
		want                      bool
	}{
		{3, 2, 2, true},  // one dead of three: reap it, two of two remain
		{5, 4, 4, true},  // one dead of five
		{5, 3, 3, true},  // two dead of five: reaping one leaves 3 of 4
		{2, 1, 1, false}, // one of two alive: no quorum now, never reap
		{3, 1, 1, false}, // one of three alive: no quorum
		{4, 2, 2, false}, // two of four: no quorum now
		{5, 5, 4, true},  // removing an alive voter (gone from gossip) keeps 4 of 4
		{3, 2, 1, false}, // removing an alive voter would leave 1 of 2
	}
	for _, c := range cases {
		if got := quorumSafe(c.voters, c.alive, c.aliveAfter); got != c.want {
			t.Errorf("quorumSafe(voters %d, alive %d, alive after %d) = %v, want %v", c.voters, c.alive, c.aliveAfter, got, c.want)
		}
	}
}
