package httpapi

import (
	"errors"
	"net/url"
	"testing"
)

// Each decoder either accepts its input or returns a client error (400);
// none panics, and none returns another kind of error.

func requireBadRequest(t *testing.T, err error) {
	t.Helper()
	var bad *badRequest
	if err != nil && !errors.As(err, &bad) {
		t.Fatalf("decoder returned %T %v, want nil or a 400 error", err, err)
	}
}

func FuzzDecodeRegistration(f *testing.F) {
	for _, s := range []string{
		`{"id":"web-1","name":"web","port":8080,"tags":["v1"],"meta":{"a":"b"}}`,
		`{"id":"web-1","name":"web","address":"10.0.0.1","port":80,"checks":[{"type":"http","http":"http://127.0.0.1:8080/health","interval":"1s"}]}`,
		`{"id":"db","name":"db","port":5432,"checks":[{"type":"ttl","ttl":"10s"},{"type":"tcp","tcp":"127.0.0.1:5432"},{"type":"exec","exec":["/bin/true"]}]}`,
		`{"id":"x","name":"-bad-","port":1}`, `{"port":"80"}`, `{`, ``, `[]`, `{"id":"a","name":"b","port":70000}`,
		`{"id":"a","name":"b","port":1,"checks":[{"type":"http"}]}`, `{"id":"a","name":"b","port":1} {}`,
		`{"id":"a","name":"b","port":1,"weight":0}`, `{"id":"a","name":"b","port":1,"weight":70000}`, `{"id":"a","name":"b","port":1,"weight":"2"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		in, err := decodeRegistration(body, "node-1")
		requireBadRequest(t, err)
		if err == nil && (in.Node != "node-1" || in.ID == "" || in.Weight < 0 || in.Weight > 65535) {
			t.Fatalf("accepted instance %+v", in)
		}
	})
}

func FuzzDecodeLeaseRequest(f *testing.F) {
	for _, s := range []string{`{"ttl":"10s"}`, `{"ttl":"0s"}`, `{"ttl":"-1s"}`, `{"ttl":10}`, `{}`, `null`, `{"ttl":"1s","x":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		ttl, err := decodeLeaseRequest(body)
		requireBadRequest(t, err)
		if err == nil && ttl < 1e9 {
			t.Fatalf("accepted ttl %v below the 1s minimum", ttl)
		}
	})
}

func FuzzDecodeLockRequest(f *testing.F) {
	for _, s := range []string{``, `{}`, `{"lease":"0000000000000005","wait":"5s","value":"v"}`, `{"hold":"connection","ttl":"2s"}`,
		`{"hold":"connection","lease":"x"}`, `{"wait":"-1s"}`, `{"lock_delay":"2m"}`, `{"hold":"forever"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeLockRequest(body)
		requireBadRequest(t, err)
		if err == nil && (req.Wait < 0 || req.Wait > MaxWait || (req.Connection && req.Lease != "") || (!req.Connection && req.TTL != 0)) {
			t.Fatalf("accepted %+v", req)
		}
	})
}

func FuzzDecodeCampaignRequest(f *testing.F) {
	for _, s := range []string{`{"candidate":"a","value":"10.0.0.1:80"}`, `{"candidate":"a","hold":"connection","ttl":"1s"}`,
		`{"candidate":"","value":"x"}`, `{"candidate":"a","wait":"11m"}`, `{"candidate":"a","service":"web-1","lease":"l"}`, `{}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := decodeCampaignRequest(body)
		requireBadRequest(t, err)
		if err == nil && req.Candidate == "" {
			t.Fatalf("accepted a campaign without candidate: %+v", req)
		}
	})
}

func FuzzParseBlocking(f *testing.F) {
	for _, s := range []string{"", "index=5&wait=30s", "index=-1", "wait=1h", "consistent", "index=18446744073709551616", "wait=abc"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		b, err := parseBlocking(q)
		requireBadRequest(t, err)
		if err == nil && (b.Wait < 0 || b.Wait > MaxWait) {
			t.Fatalf("accepted wait %v", b.Wait)
		}
	})
}
