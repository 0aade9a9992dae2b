// Command coredns is CoreDNS (github.com/coredns/coredns, the version
// go.mod pins) with only the plugins the podnet lab's cluster DNS uses,
// built by hack/coredns.sh. It is a module of its own so that the podnet
// module does not depend on CoreDNS.
//
// CoreDNS registers a plugin when its package is imported; the directive
// list of core/dnsserver only orders the registered ones, so a Corefile may
// use exactly the plugins imported here and is refused ("unknown directive")
// for any other. There is deliberately no forward plugin: the lab never
// sends DNS queries to addresses outside the lab.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/template"
)

func main() {
	coremain.Run()
}
