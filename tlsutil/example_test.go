package tlsutil_test

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"time"

	"github.com/sidecarhq/sidecar/tlsutil"
)

// A CA signs one certificate per agent; the certificate says the agent's
// role and node name, which is what peers act on.
func ExampleCA_Issue() {
	ca, err := tlsutil.NewCA(tlsutil.DefaultCADays, time.Now())
	if err != nil {
		panic(err)
	}
	certPEM, _, err := ca.Issue(tlsutil.CertRequest{Role: tlsutil.RoleServer, Node: "db 1", Domain: "sidecar."})
	if err != nil {
		panic(err)
	}
	blk, _ := pem.Decode(certPEM)
	cert, _ := x509.ParseCertificate(blk.Bytes)
	id, err := tlsutil.IdentityOf(cert, "sidecar")
	fmt.Println(cert.DNSNames[0], cert.URIs[0], id, err)
	// Output: server.sidecar sidecar://node/db%201 server db 1 <nil>
}
