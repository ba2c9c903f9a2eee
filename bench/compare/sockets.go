package main

import (
	"context"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// conn is one established TCP connection as ss reports it.
type conn struct {
	pid        int
	remotePort int
	received   int64 // bytes_received
}

var (
	ssPid      = regexp.MustCompile(`pid=(\d+)`)
	ssReceived = regexp.MustCompile(`bytes_received:(\d+)`)
)

// tcpConns lists established TCP connections with their owner and bytes
// received, keyed by "pid local remote" (ss -tinp).
func tcpConns() (map[string]conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ss", "-tinpH", "state", "established").Output()
	if err != nil {
		return nil, err
	}
	conns := map[string]conn{}
	lines := strings.Split(string(out), "\n")
	for i := 0; i+1 < len(lines); i++ {
		f := strings.Fields(lines[i])
		m := ssPid.FindStringSubmatch(lines[i])
		if len(f) < 4 || m == nil {
			continue
		}
		// Fields: Recv-Q Send-Q Local Peer Process (state filtered away).
		local, peer := f[2], f[3]
		_, port, err := net.SplitHostPort(peer)
		if err != nil {
			continue
		}
		pid, _ := strconv.Atoi(m[1])
		c := conn{pid: pid}
		c.remotePort, _ = strconv.Atoi(port)
		if r := ssReceived.FindStringSubmatch(lines[i+1]); r != nil {
			c.received, _ = strconv.ParseInt(r[1], 10, 64)
			i++
		}
		conns[m[1]+" "+local+" "+peer] = c
	}
	return conns, nil
}

// streamSources says, for each client agent, which server its change
// stream comes from: the stream is the connection to a server's Raft port
// that keeps receiving (heartbeats every 500 ms) while nothing is written.
// Call it while the cluster is idle.
func (c *sidecarCluster) streamSources() string {
	leader, _ := c.leader()
	raftPort := map[int]*scNode{}
	for _, s := range c.servers {
		raftPort[portOf(s)] = s
	}
	before, err := tcpConns()
	if err != nil {
		return "unknown (ss: " + err.Error() + ")"
	}
	time.Sleep(1200 * time.Millisecond)
	after, err := tcpConns()
	if err != nil {
		return "unknown (ss: " + err.Error() + ")"
	}
	var out []string
	for _, cl := range c.clients {
		src := "unknown"
		for k, a := range after {
			s, ok := raftPort[a.remotePort]
			if a.pid != cl.p.pid() || !ok {
				continue
			}
			if b, seen := before[k]; seen && a.received > b.received {
				src = s.name
				if s == leader {
					src += " (the leader)"
				} else {
					src += " (a follower)"
				}
			}
		}
		out = append(out, cl.name+" streams from "+src)
	}
	return strings.Join(out, ", ")
}

func portOf(n *scNode) int {
	for i, a := range n.args {
		if a == "--raft-addr" && i+1 < len(n.args) {
			if _, p, err := net.SplitHostPort(n.args[i+1]); err == nil {
				v, _ := strconv.Atoi(p)
				return v
			}
		}
	}
	return 0
}
