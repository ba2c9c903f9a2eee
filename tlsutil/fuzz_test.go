package tlsutil

import (
	"testing"
	"time"
)

// FuzzParseCA checks that no file content, as --ca/--ca-key or a TLS file
// would hand it over, panics the parsers.
func FuzzParseCA(f *testing.F) {
	ca, err := NewCA(1, time.Now())
	if err != nil {
		f.Fatal(err)
	}
	key, _ := ca.KeyPEM()
	f.Add(ca.CertPEM(), key)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), []byte("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"))
	f.Add([]byte{}, []byte("garbage"))
	f.Fuzz(func(t *testing.T, certPEM, keyPEM []byte) {
		if c, err := ParseCA(certPEM, keyPEM); err == nil && (c.Cert == nil || c.Key == nil) {
			t.Fatal("ParseCA succeeded without a certificate and key")
		}
		if certs, err := parseCerts(certPEM); err == nil {
			for _, c := range certs {
				IdentityOf(c, "sidecar")
			}
		}
	})
}
