// Command coredns is CoreDNS v1.15.0 (go.mod) with only the plugins of the
// README's Corefile server block (errors, cache, forward), for
// test/dnsinterop: built from the module proxy in one to two minutes on
// fresh caches, where the whole of CoreDNS (every plugin, the cloud
// providers' SDKs, Kubernetes' client) takes over ten.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
)

func init() {
	// The plugins a server block may name, in the order of CoreDNS's
	// plugin.cfg, which is the order they handle a query in.
	dnsserver.Directives = []string{"errors", "cache", "forward"}
}

func main() { coremain.Run() }
