package election

import "testing"

// A leader hint names only where a client may go among the servers it
// already knows: an answer naming any other address (a server that lies,
// or a stale one removed from gossip) sends nothing there.
func TestRemote_hintOutsideTheKnownServersIsIgnored(t *testing.T) {
	known := []string{"10.0.0.1:7947", "10.0.0.2:7947"}
	r := NewRemote(nil, func() []string { return known })
	defer r.Close()
	foreign := "203.0.113.9:7947"
	r.leader.Store(&foreign)
	for range 4 {
		addr, _, err := r.target()
		if err != nil {
			t.Fatal(err)
		}
		if addr == foreign {
			t.Fatalf("sent to %s, which no gossip member announced", foreign)
		}
	}
	leader := known[1]
	r.leader.Store(&leader)
	for range 4 {
		if addr, _, _ := r.target(); addr != leader {
			t.Fatalf("sent to %s, want the named leader %s", addr, leader)
		}
	}
}
