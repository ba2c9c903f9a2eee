package blackbox

import (
	"fmt"
	"os/exec"
	"strings"
)

// Chains inside every node's namespace: BB_IN is jumped from INPUT, BB_OUT
// from OUTPUT. Each starts by returning the harness's own traffic, so the
// harness (the apps beside each sidecar) always reaches every node.
const (
	chainIn  = "BB_IN"
	chainOut = "BB_OUT"
)

// Rules is the filter of one node: peers cut both ways, peers this node's
// packets do not reach (one-way), and random loss of incoming packets.
type Rules struct {
	Cut    []*Node
	NoSend []*Node
	Loss   float64
}

func (r Rules) empty() bool { return len(r.Cut) == 0 && len(r.NoSend) == 0 && r.Loss == 0 }

// iptablesRestore feeds an iptables-restore script to n's namespace;
// --noflush keeps other chains, and each script is applied atomically.
func iptablesRestore(n *Node, script string) error {
	cmd := exec.Command("ip", "netns", "exec", n.NS, "iptables-restore", "-w", "--noflush")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("iptables-restore in %s: %w: %s", n.NS, err, out)
	}
	return nil
}

// InitFilters creates the chains in every node's namespace.
func (c *Cluster) InitFilters() error {
	for _, n := range c.Nodes {
		script := fmt.Sprintf("*filter\n:%s - [0:0]\n:%s - [0:0]\n-A INPUT -j %s\n-A OUTPUT -j %s\nCOMMIT\n",
			chainIn, chainOut, chainIn, chainOut)
		if err := iptablesRestore(n, script); err != nil {
			return err
		}
		if err := c.SetRules(n, Rules{}); err != nil {
			return err
		}
	}
	return nil
}

// SetRules replaces n's filter with r (the empty Rules heal it).
func (c *Cluster) SetRules(n *Node, r Rules) error {
	h := c.Env.HarnessIP()
	var b strings.Builder
	fmt.Fprintf(&b, "*filter\n-F %s\n-F %s\n", chainIn, chainOut)
	fmt.Fprintf(&b, "-A %s -s %s/32 -j RETURN\n-A %s -d %s/32 -j RETURN\n", chainIn, h, chainOut, h)
	for _, p := range r.Cut {
		fmt.Fprintf(&b, "-A %s -s %s/32 -j DROP\n-A %s -d %s/32 -j DROP\n", chainIn, p.IP, chainOut, p.IP)
	}
	for _, p := range r.NoSend {
		fmt.Fprintf(&b, "-A %s -d %s/32 -j DROP\n", chainOut, p.IP)
	}
	if r.Loss > 0 {
		// Incoming only, so a packet between two lossy nodes is dropped
		// with probability Loss, not twice that.
		fmt.Fprintf(&b, "-A %s -i eth0 -m statistic --mode random --probability %.3f -j DROP\n", chainIn, r.Loss)
	}
	b.WriteString("COMMIT\n")
	return iptablesRestore(n, b.String())
}

// ApplyRules sets every node's filter: nodes absent from rules are healed.
func (c *Cluster) ApplyRules(rules map[*Node]Rules) error {
	for _, n := range c.Nodes {
		if err := c.SetRules(n, rules[n]); err != nil {
			return err
		}
	}
	return nil
}

// Heal removes every cut and loss.
func (c *Cluster) Heal() error { return c.ApplyRules(nil) }

// Partition cuts every pair of nodes in different groups; nodes in no
// group keep every link.
func Partition(groups ...[]*Node) map[*Node]Rules {
	rules := map[*Node]Rules{}
	for i, g := range groups {
		for _, a := range g {
			r := rules[a]
			for j, h := range groups {
				if i != j {
					r.Cut = append(r.Cut, h...)
				}
			}
			rules[a] = r
		}
	}
	return rules
}

// CutPairs cuts each pair both ways.
func CutPairs(pairs [][2]*Node) map[*Node]Rules {
	rules := map[*Node]Rules{}
	for _, p := range pairs {
		r := rules[p[0]]
		r.Cut = append(r.Cut, p[1])
		rules[p[0]] = r
		r = rules[p[1]]
		r.Cut = append(r.Cut, p[0])
		rules[p[1]] = r
	}
	return rules
}

func names(nodes []*Node) string {
	s := make([]string, len(nodes))
	for i, n := range nodes {
		s[i] = n.Name
	}
	return strings.Join(s, ",")
}
