package healthcheck_test

import (
	"context"
	"fmt"
	"time"

	"github.com/sidecarhq/sidecar/fsm"
	"github.com/sidecarhq/sidecar/healthcheck"
)

// printer is a Notifier that hands each change to a channel.
type printer chan string

func (p printer) UpdateCheck(_ context.Context, checkID, status, output string) error {
	p <- fmt.Sprintf("%s is %s: %s", checkID, status, output)
	return nil
}

// A TTL check starts critical, as the registry registers it, and reports
// each change the application makes.
func Example() {
	changes := make(printer, 10)
	r, err := healthcheck.New(healthcheck.DefaultConfig(), changes)
	if err != nil {
		panic(err)
	}
	defer r.Close()
	err = r.Sync([]healthcheck.Instance{{ID: "web-1", Checks: []fsm.Check{
		{ID: "web-1:ready", Type: "ttl", TTL: int64(time.Minute)},
	}}})
	if err != nil {
		panic(err)
	}
	fmt.Println(r.Statuses()["web-1:ready"].Status)

	if err := r.TTLUpdate("web-1:ready", fsm.StatusPassing, "warmed up"); err != nil {
		panic(err)
	}
	fmt.Println(<-changes)
	// Output:
	// critical
	// web-1:ready is passing: warmed up
}
