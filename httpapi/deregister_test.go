package httpapi

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidecarhq/sidecar/fsm"
	"github.com/sidecarhq/sidecar/localstate"
)

// damagedAgent keeps web-7 in a local state whose record of it is damaged;
// only the calls a deregistration makes are implemented.
type damagedAgent struct {
	Agent
	deregistered bool
}

func (*damagedAgent) Node() string { return "client" }

func (*damagedAgent) LocalServiceName(id string) (string, bool, error) {
	return "", false, fmt.Errorf("%w: record services/%q: checksum mismatch", localstate.ErrDamaged, id)
}

func (a *damagedAgent) DeregisterService(context.Context, string) (*fsm.Result, error) {
	a.deregistered = true
	return &fsm.Result{}, nil
}

// An instance the registry does not show yet (a client's replica lags the
// leader) whose local record is damaged: the deregistration answers 503
// with the damage, never 404 "unknown instance" for an instance this agent
// owns (CI saw the 404 when the replica was behind).
func TestDeregister_damagedLocalRecordIsNotUnknown(t *testing.T) {
	a := &damagedAgent{}
	s := New(Config{Gatherer: prometheus.NewRegistry()}, fsm.New(), a, nil)
	w := httptest.NewRecorder()
	s.ServeHTTP(w, httptest.NewRequest(http.MethodDelete, "http://127.0.0.1/v1/services/web-7", nil))
	if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), "checksum mismatch") {
		t.Fatalf("deregister = %d %s; want 503 naming the damage", w.Code, w.Body)
	}
	if a.deregistered {
		t.Fatal("the deregistration went ahead past a local record it could not read")
	}
}
