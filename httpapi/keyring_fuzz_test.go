package httpapi

import (
	"testing"

	"github.com/hashicorp/memberlist"
)

func FuzzDecodeKeyringRequest(f *testing.F) {
	for _, s := range []string{
		`{"install":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}`, `{"use":"AgICAgICAgICAgICAgICAg=="}`,
		`{"remove":"AwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMD"}`, `{}`, `{"install":""}`, `{"install":"x","use":"y"}`,
		`{"install":1}`, `{"rotate":"k"}`, `{`, ``, `null`, `[]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		op, key, err := decodeKeyringRequest(body)
		requireBadRequest(t, err)
		if err == nil && (op == "" || memberlist.ValidateKey(key) != nil) {
			t.Fatalf("accepted op %q with a %d-byte key", op, len(key))
		}
	})
}
