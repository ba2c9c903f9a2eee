package discovery_test

import (
	"context"
	"fmt"
	"time"

	"github.com/sidecarhq/sidecar/discovery"
)

// Two sidecars on loopback: a server that starts alone and a client that
// joins it.
func Example() {
	ctx := context.Background()

	scfg := discovery.TestConfig() // DefaultConfig in production
	scfg.Name = "server-1"
	scfg.Meta = discovery.Meta{Role: discovery.RoleServer, RaftAddr: "127.0.0.1:7947"}
	server, err := discovery.New(scfg)
	if err != nil {
		panic(err)
	}
	defer server.Shutdown()
	_ = server.Start(ctx) // no Join addresses: a cluster of one

	ccfg := discovery.TestConfig()
	ccfg.Name = "client-1"
	ccfg.Meta = discovery.Meta{Role: discovery.RoleClient, HTTPAddr: "127.0.0.1:7080"}
	ccfg.Join = []string{server.Addr()}
	client, err := discovery.New(ccfg)
	if err != nil {
		panic(err)
	}
	defer client.Shutdown()
	_ = client.Start(ctx)
	<-client.Joined()

	for _, m := range client.Members() {
		fmt.Printf("%s %s role=%s raft=%q\n", m.Name, m.Status, m.Meta.Role, m.Meta.RaftAddr)
	}

	_ = client.Leave(5 * time.Second)
	for ev := range server.Events() {
		if ev.Member.Name == "client-1" && ev.Type == discovery.EventLeave {
			fmt.Println(ev)
			break
		}
	}
	// Output:
	// client-1 alive role=client raft=""
	// server-1 alive role=server raft="127.0.0.1:7947"
	// leave client-1 (left)
}
