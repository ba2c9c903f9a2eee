package checker

import (
	"fmt"
	"sort"
	"strings"

	"github.com/anishathalye/porcupine"
)

// registryModel is one registry key: absent ("") or the value last written.
// Values are unique per write, so a read names the write it saw.
var registryModel = porcupine.Model{
	Partition: partitionByKey,
	Init:      func() interface{} { return "" },
	Step: func(state, input, output interface{}) (bool, interface{}) {
		st := state.(string)
		op := input.(Op)
		switch op.Kind {
		case Put:
			return true, op.Value
		case Del:
			if op.Outcome == Unknown {
				return true, ""
			}
			return op.Found == (st != ""), ""
		case Get:
			return op.Value == st, st
		}
		return false, st
	},
	DescribeOperation: describeOp,
	DescribeState: func(state interface{}) string {
		if state.(string) == "" {
			return "absent"
		}
		return state.(string)
	},
}

// lockState is one try-lock: its holder (a lease) and token, the last token
// handed out and the leases revoked so far (sorted, comma separated).
type lockState struct {
	holder string
	token  uint64
	last   uint64
	dead   string
}

func (s lockState) isDead(lease string) bool {
	for _, d := range strings.Split(s.dead, ",") {
		if d == lease {
			return true
		}
	}
	return false
}

func (s lockState) kill(lease string) lockState {
	if s.isDead(lease) {
		return s
	}
	ds := []string{lease}
	if s.dead != "" {
		ds = append(ds, strings.Split(s.dead, ",")...)
	}
	sort.Strings(ds)
	s.dead = strings.Join(ds, ",")
	if s.holder == lease {
		s.holder, s.token = "", 0
	}
	return s
}

// lockModel is one lock taken only without waiting. A lease may expire at
// any moment (the model does not see TTLs), so before each step the holder
// may have lost the lock; a revoked lease never gets it again.
var lockModel = porcupine.NondeterministicModel{
	Partition: partitionByKey,
	Init:      func() []interface{} { return []interface{}{lockState{}} },
	Step: func(state, input, output interface{}) []interface{} {
		s := state.(lockState)
		op := input.(Op)
		pre := []lockState{s}
		if s.holder != "" {
			pre = append(pre, lockState{last: s.last, dead: s.dead})
		}
		var out []interface{}
		for _, p := range pre {
			for _, n := range lockStep(p, op) {
				out = append(out, n)
			}
		}
		return out
	},
	DescribeOperation: describeOp,
	DescribeState: func(state interface{}) string {
		s := state.(lockState)
		return fmt.Sprintf("holder=%q token=%d last=%d revoked=[%s]", s.holder, s.token, s.last, s.dead)
	},
}

func lockStep(p lockState, op Op) []lockState {
	switch op.Kind {
	case TryLock:
		if op.Outcome == Unknown {
			next := []lockState{p}
			if p.holder == "" && !p.isDead(op.Lease) {
				n := p
				n.holder, n.token = op.Lease, 0 // token unknown
				next = append(next, n)
			}
			return next
		}
		switch {
		case op.Refused: // the lease is unknown to the registry
			if p.holder != op.Lease {
				return []lockState{p}
			}
		case op.Held:
			if p.isDead(op.Lease) {
				return nil
			}
			if p.holder == op.Lease && (p.token == 0 || p.token == op.Token) {
				n := p
				n.token = op.Token
				if op.Token > n.last {
					n.last = op.Token
				}
				return []lockState{n}
			}
			if p.holder == "" && op.Token > p.last {
				n := p
				n.holder, n.token, n.last = op.Lease, op.Token, op.Token
				return []lockState{n}
			}
		default:
			if p.holder != "" && p.holder != op.Lease {
				return []lockState{p}
			}
		}
		return nil
	case Unlock:
		// A guarded unlock (with a token) releases only that acquisition.
		holds := p.holder == op.Lease && (op.Token == 0 || p.token == op.Token)
		vacated := p
		if holds {
			vacated.holder, vacated.token = "", 0
		}
		switch {
		case op.Outcome == Unknown:
			return []lockState{p, vacated}
		case op.Refused:
			if !holds {
				return []lockState{p}
			}
			return nil
		default:
			if holds {
				return []lockState{vacated}
			}
			return nil
		}
	case Revoke:
		if op.Outcome == Unknown {
			return []lockState{p, p.kill(op.Lease)}
		}
		if op.Refused && p.holder == op.Lease {
			return nil
		}
		return []lockState{p.kill(op.Lease)}
	}
	return nil
}

func partitionByKey(history []porcupine.Operation) [][]porcupine.Operation {
	byKey := map[string][]porcupine.Operation{}
	var keys []string
	for _, o := range history {
		k := o.Input.(Op).Key
		if _, ok := byKey[k]; !ok {
			keys = append(keys, k)
		}
		byKey[k] = append(byKey[k], o)
	}
	sort.Strings(keys)
	out := make([][]porcupine.Operation, 0, len(keys))
	for _, k := range keys {
		out = append(out, byKey[k])
	}
	return out
}

func describeOp(input, _ interface{}) string {
	op := input.(Op)
	res := op.Outcome.String()
	switch op.Kind {
	case Put:
		return fmt.Sprintf("c%d put(%s)=%s", op.Client, op.Value, res)
	case Del:
		return fmt.Sprintf("c%d del found=%v %s", op.Client, op.Found, res)
	case Get:
		return fmt.Sprintf("c%d get -> %q", op.Client, op.Value)
	case TryLock:
		return fmt.Sprintf("c%d trylock(%s) held=%v token=%d refused=%v %s", op.Client, op.Lease, op.Held, op.Token, op.Refused, res)
	case Unlock:
		return fmt.Sprintf("c%d unlock(%s) refused=%v %s", op.Client, op.Lease, op.Refused, res)
	case Revoke:
		return fmt.Sprintf("c%d revoke(%s) refused=%v %s", op.Client, op.Lease, op.Refused, res)
	}
	return string(op.Kind)
}
