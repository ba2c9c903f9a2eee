package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// remotePorts lists the remote ports of the established TCP connections
// of process pid (from /proc/<pid>/fd and /proc/net/tcp).
func remotePorts(pid int) (map[int]bool, error) {
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, err
	}
	for _, fd := range fds {
		l, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return nil, err
	}
	ports := map[int]bool{}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 10 || f[3] != "01" || !inodes[f[9]] { // 01: ESTABLISHED
			continue
		}
		rem := f[2]
		if i := strings.IndexByte(rem, ':'); i >= 0 {
			if p, err := strconv.ParseUint(rem[i+1:], 16, 16); err == nil {
				ports[int(p)] = true
			}
		}
	}
	return ports, nil
}

// streamSources says, for each client agent, which server its change
// stream most likely comes from: a client forwards writes only to the
// leader, so a connection to a follower's Raft port is its stream; with
// connections to the leader only, the stream is the leader's.
func (c *sidecarCluster) streamSources() string {
	leader, _ := c.leader()
	raftPort := map[int]*scNode{}
	for _, s := range c.servers {
		raftPort[portOf(s)] = s
	}
	var out []string
	for _, cl := range c.clients {
		ports, err := remotePorts(cl.p.pid())
		if err != nil {
			out = append(out, cl.name+": unknown")
			continue
		}
		src := ""
		for p := range ports {
			if s, ok := raftPort[p]; ok && s != leader {
				src = s.name + " (a follower)"
			}
		}
		if src == "" && leader != nil && ports[portOf(leader)] {
			src = leader.name + " (the leader)"
		}
		if src == "" {
			src = "unknown"
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
