package httpapi

import (
	"testing"

	"github.com/sidecarhq/sidecar/fsm"
)

// TestDecodeRegistration_weight: a weight is stored as given, no weight is
// stored as 0 and served as 1, and anything outside 1-65535 is a 400.
func TestDecodeRegistration_weight(t *testing.T) {
	for _, tc := range []struct {
		body      string
		weight    int // stored
		effective int
	}{
		{`{"id":"a","name":"a","port":1}`, 0, 1},
		{`{"id":"a","name":"a","port":1,"weight":1}`, 1, 1},
		{`{"id":"a","name":"a","port":1,"weight":3}`, 3, 3},
		{`{"id":"a","name":"a","port":1,"weight":65535}`, 65535, 65535},
	} {
		in, err := decodeRegistration([]byte(tc.body), "n1")
		if err != nil {
			t.Fatalf("%s: %v", tc.body, err)
		}
		if in.Weight != tc.weight || in.EffectiveWeight() != tc.effective {
			t.Errorf("%s: weight %d effective %d, want %d and %d", tc.body, in.Weight, in.EffectiveWeight(), tc.weight, tc.effective)
		}
		if err := fsm.ValidateInstance(in); err != nil {
			t.Errorf("%s: the registry would refuse it: %v", tc.body, err)
		}
	}
	for _, body := range []string{
		`{"id":"a","name":"a","port":1,"weight":0}`,
		`{"id":"a","name":"a","port":1,"weight":-1}`,
		`{"id":"a","name":"a","port":1,"weight":65536}`,
		`{"id":"a","name":"a","port":1,"weight":9223372036854775808}`,
		`{"id":"a","name":"a","port":1,"weight":"3"}`,
		`{"id":"a","name":"a","port":1,"weight":2.5}`,
		`{"id":"a","name":"a","port":1,"weight":true}`,
	} {
		_, err := decodeRegistration([]byte(body), "n1")
		if _, ok := err.(*badRequest); !ok {
			t.Errorf("%s: %v, want a 400", body, err)
		}
	}
}
