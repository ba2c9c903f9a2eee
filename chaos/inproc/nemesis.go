package inproc

import (
	"context"
	"fmt"
	"math/rand"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sidecarhq/sidecar/chaos/checker"
)

// nemesis injects one fault at a time until ctx ends, then heals the
// network and restarts every crashed server.
func (r *run) nemesis(ctx context.Context, rng *rand.Rand) {
	defer r.healAll()
	n := r.c.Size()
	// Partitions that leave a leader behind are listed twice: they are
	// where stale reads and early lease expiry would show.
	kinds := []string{"isolate-leader", "isolate-leader", "partition", "partition", "oneway-leader-out", "oneway-leader-in",
		"oneway-random", "delay", "loss", "crash", "crash-leader", "flip-leader", "flip-leader"}
	if n == 5 {
		kinds = append(kinds, "bridge", "ring")
	}
	for k := 0; ; k++ {
		if !sleepCtx(ctx, time.Duration(300+rng.Intn(1200))*time.Millisecond) {
			return
		}
		kind := kinds[rng.Intn(len(kinds))]
		if k%4 == 1 {
			// Every fourth fault, from the second on, moves leadership
			// away and back, so that every run returns leadership to a
			// server that led before, early in the run.
			kind = "flip-leader"
		}
		dur := time.Duration(500+rng.Intn(2500)) * time.Millisecond
		if kind == "flip-leader" {
			// Away for longer than any client's session TTL (1-2 s): each
			// lease then outlives, through keepalives to the other server,
			// the deadline the first leader last gave it, so a first
			// leader that kept its old deadlines (leaselocalclock) expires
			// it early on its return.
			dur = 2*time.Second + dur/2
		}
		f := checker.Fault{Kind: kind, Start: r.rec.Now()}
		leader := r.c.Leader()
		if leader < 0 {
			leader = rng.Intn(n)
		}
		perm := rng.Perm(n)
		crashed := -1
		var flipBack func()
		switch kind {
		case "isolate-leader":
			r.split([]int{leader})
			f.Detail = r.c.Name(leader)
		case "partition":
			minority := perm[:1+rng.Intn((n-1)/2)]
			r.split(minority)
			f.Detail = fmt.Sprint(names(r.c, minority))
		case "oneway-leader-out", "oneway-leader-in":
			for j := 0; j < n; j++ {
				if j == leader {
					continue
				}
				if kind == "oneway-leader-out" {
					r.net.Cut(r.c.Name(leader), r.c.Name(j))
				} else {
					r.net.Cut(r.c.Name(j), r.c.Name(leader))
				}
			}
			f.Detail = r.c.Name(leader)
		case "oneway-random":
			for k := 0; k < 1+rng.Intn(n); k++ {
				a, b := rng.Intn(n), rng.Intn(n)
				if a != b {
					r.net.Cut(r.c.Name(a), r.c.Name(b))
					f.Detail += fmt.Sprintf("%s->%s ", r.c.Name(a), r.c.Name(b))
				}
			}
		case "delay":
			// Bounded well below heartbeat timeout minus leader lease: the
			// lease guarantee assumes bounded message delay.
			d := time.Duration(1+rng.Intn(10)) * time.Millisecond
			r.net.SetDelay(d)
			f.Detail = d.String()
		case "loss":
			p := 0.05 + rng.Float64()*0.45
			r.net.SetLoss(p)
			f.Detail = fmt.Sprintf("%.0f%%", p*100)
		case "crash", "crash-leader":
			crashed = perm[0]
			if kind == "crash-leader" {
				crashed = leader
			}
			wasLeader := crashed == r.c.Leader()
			at := time.Now()
			r.c.Crash(crashed)
			f.Detail = r.c.Name(crashed)
			if wasLeader {
				r.bg.Add(1)
				go func() { defer r.bg.Done(); r.timeNewLeader(ctx, at) }()
			}
		case "flip-leader":
			// Leadership to another server and, after dur, back: a server
			// that leads again must restart every lease's full TTL, never
			// reuse the deadlines of its earlier term, when the keepalives
			// went to the other (leaselocalclock).
			other := perm[0]
			if other == leader {
				other = perm[1]
			}
			f.Detail = r.c.Name(leader) + "->" + r.c.Name(other) + " (no transfer)"
			if a, _ := r.c.Server(leader); a != nil && a.IsLeader() {
				if b, _ := r.c.Server(other); b != nil {
					err := a.Raft().LeadershipTransferToServer(raft.ServerID(r.c.Name(other)), b.Addr()).Error()
					f.Detail = r.c.Name(leader) + "->" + r.c.Name(other)
					if err != nil {
						f.Detail += " (transfer failed)"
					}
					back := a.Addr()
					flipBack = func() {
						if b, _ := r.c.Server(other); b != nil && b.IsLeader() {
							if b.Raft().LeadershipTransferToServer(raft.ServerID(r.c.Name(leader)), back).Error() == nil {
								f.Detail += " and back"
							} else {
								f.Detail += ", back failed"
							}
						} else {
							f.Detail += ", not leading to go back"
						}
					}
				}
			}
		case "bridge":
			// perm[0] is the bridge, in both halves.
			a, b := perm[1:3], perm[3:5]
			for _, x := range a {
				for _, y := range b {
					r.cutBoth(x, y)
				}
			}
			f.Detail = "bridge " + r.c.Name(perm[0])
		case "ring":
			// Each node sees its two ring neighbours: every node is in a
			// majority, no two majorities agree.
			for i := 0; i < n; i++ {
				r.cutBoth(perm[i], perm[(i+2)%n])
			}
			f.Detail = fmt.Sprint(names(r.c, perm))
		}
		ok := sleepCtx(ctx, dur)
		if flipBack != nil {
			flipBack()
		}
		r.net.Heal()
		if crashed >= 0 {
			if err := r.c.Start(crashed); err != nil {
				r.rec.Anomaly("restart %s: %v", r.c.Name(crashed), err)
			}
		}
		f.Stop = r.rec.Now()
		r.rec.AddFault(f)
		if !ok {
			return
		}
	}
}

func (r *run) timeNewLeader(ctx context.Context, at time.Time) {
	for ctx.Err() == nil && time.Since(at) < 30*time.Second {
		if r.c.Leader() >= 0 {
			r.mu.Lock()
			r.recovery = append(r.recovery, time.Since(at))
			r.mu.Unlock()
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (r *run) cutBoth(a, b int) {
	r.net.Cut(r.c.Name(a), r.c.Name(b))
	r.net.Cut(r.c.Name(b), r.c.Name(a))
}

// split cuts group off from every other server, both ways.
func (r *run) split(group []int) {
	in := map[int]bool{}
	for _, g := range group {
		in[g] = true
	}
	for a := 0; a < r.c.Size(); a++ {
		for b := 0; b < r.c.Size(); b++ {
			if in[a] && !in[b] {
				r.cutBoth(a, b)
			}
		}
	}
}

func (r *run) healAll() {
	r.net.Heal()
	for i := 0; i < r.c.Size(); i++ {
		if s, _ := r.c.Server(i); s == nil {
			if err := r.c.Start(i); err != nil {
				r.rec.Anomaly("restart %s: %v", r.c.Name(i), err)
			}
		}
	}
}

func names(c *Cluster, idx []int) []string {
	out := make([]string, len(idx))
	for i, j := range idx {
		out[i] = c.Name(j)
	}
	return out
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}
