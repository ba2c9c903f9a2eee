package discovery

import (
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

// Every server that bootstraps one configuration advertises the same tag,
// whatever the order it listed the servers in; another set of servers, or
// another address, gives another tag; and none looks like the tag of a
// cluster that has had a leader.
func TestBootstrapTag(t *testing.T) {
	conf := func(servers ...string) raft.Configuration {
		var c raft.Configuration
		for _, s := range servers {
			id, addr, _ := strings.Cut(s, "=")
			c.Servers = append(c.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: raft.ServerAddress(addr)})
		}
		return c
	}
	abc := bootstrapTag(conf("a=10.0.0.1:7947", "b=10.0.0.2:7947", "c=10.0.0.3:7947"))
	if got := bootstrapTag(conf("c=10.0.0.3:7947", "a=10.0.0.1:7947", "b=10.0.0.2:7947")); got != abc {
		t.Errorf("tag depends on the order of the servers: %s, %s", abc, got)
	}
	if !strings.HasPrefix(abc, stagePrefix) || abc == "1" {
		t.Errorf("bootstrap tag %q does not start with %q", abc, stagePrefix)
	}
	for _, other := range []raft.Configuration{
		conf("a=10.0.0.1:7947", "b=10.0.0.2:7947"),
		conf("a=10.0.0.1:7947", "b=10.0.0.2:7947", "c=10.0.0.3:7947", "d=10.0.0.4:7947"),
		conf("a=10.0.0.1:7947", "b=10.0.0.2:7947", "c=10.0.0.9:7947"),
	} {
		if bootstrapTag(other) == abc {
			t.Errorf("configuration %v has the tag of another", other.Servers)
		}
	}
}
