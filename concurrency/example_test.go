package concurrency_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/concurrency"
)

// Take a lock, act while its Done is open, and release it with the
// acquisition's token.
func ExampleMutex() {
	ctx := context.Background()
	client, err := api.NewClient(sidecarAddr) // the local sidecar
	if err != nil {
		log.Fatal(err)
	}
	defer client.CloseIdleConnections()
	s, err := concurrency.NewSession(ctx, client, concurrency.WithTTL(5*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close(ctx)

	m := concurrency.NewMutex(s, "example-report")
	if err := m.Lock(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("held with a fencing token:", m.Token() > 0)
	select {
	case <-m.Done():
		fmt.Println("lost before the work was done:", m.Err())
	default:
		// ... the work, stopping as soon as m.Done() closes ...
	}
	if err := m.Unlock(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println("released")
	// Output:
	// held with a fencing token: true
	// released
}

// Campaign until leading, serve while Done is open, and resign.
func ExampleElection() {
	ctx := context.Background()
	client, err := api.NewClient(sidecarAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.CloseIdleConnections()
	s, err := concurrency.NewSession(ctx, client)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close(ctx)

	e := concurrency.NewElection(s, "example-db")
	l, err := e.Campaign(ctx, "db-1", "10.0.0.1:5432")
	if err != nil {
		log.Fatal(err)
	}
	leader, err := e.Leader(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("leader %s at %s, token > 0: %v\n", leader.Candidate, leader.Value, l.Token() > 0)
	// ... serve as leader until <-l.Done() ...
	if err := l.Resign(ctx); err != nil {
		log.Fatal(err)
	}
	leader, err = e.Leader(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("vacant after resigning:", leader == nil)
	// Output:
	// leader db-1 at 10.0.0.1:5432, token > 0: true
	// vacant after resigning: true
}

// Hand leadership over to a waiting candidate without a vacancy: the old
// term's Done closes first, the new term has a greater token.
func ExampleLeadership_TransferTo() {
	ctx := context.Background()
	client, err := api.NewClient(sidecarAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.CloseIdleConnections()
	// Two sessions: two processes, in real life.
	s1, err := concurrency.NewSession(ctx, client)
	if err != nil {
		log.Fatal(err)
	}
	defer s1.Close(ctx)
	s2, err := concurrency.NewSession(ctx, client)
	if err != nil {
		log.Fatal(err)
	}
	defer s2.Close(ctx)

	old, err := concurrency.NewElection(s1, "example-primary").Campaign(ctx, "old", "10.0.0.1:80")
	if err != nil {
		log.Fatal(err)
	}
	next := make(chan *concurrency.Leadership)
	go func() {
		l, err := concurrency.NewElection(s2, "example-primary").Campaign(ctx, "new", "10.0.0.2:80")
		if err != nil {
			log.Fatal(err)
		}
		next <- l
	}()
	// Give "new" a moment to get in line: a transfer to a candidate that
	// is not waiting is refused with 409.
	time.Sleep(200 * time.Millisecond)
	if err := old.TransferTo(ctx, "new"); err != nil {
		log.Fatal(err)
	}
	<-old.Done()
	l := <-next
	fmt.Println("new term, greater token:", l.Token() > old.Token())
	l.Resign(ctx)
	// Output:
	// new term, greater token: true
}

// A resource that cannot remember the highest token it has seen asks Fence
// before it acts. After the lock passes on, the old token is refused.
func ExampleFence() {
	ctx := context.Background()
	client, err := api.NewClient(sidecarAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.CloseIdleConnections()
	s, err := concurrency.NewSession(ctx, client)
	if err != nil {
		log.Fatal(err)
	}
	defer s.Close(ctx)

	m := concurrency.NewMutex(s, "example-file")
	if err := m.Lock(ctx); err != nil {
		log.Fatal(err)
	}
	old := m.Token()
	current, _, err := concurrency.Fence(ctx, client, concurrency.KindLock, "example-file", old)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("holder's token current:", current)

	// The lock passes on (here: released and taken again).
	if err := m.Unlock(ctx); err != nil {
		log.Fatal(err)
	}
	if err := m.Lock(ctx); err != nil {
		log.Fatal(err)
	}
	current, now, err := concurrency.Fence(ctx, client, concurrency.KindLock, "example-file", old)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("old token current:", current, "- newer token:", now == m.Token())
	m.Unlock(ctx)
	// Output:
	// holder's token current: true
	// old token current: false - newer token: true
}
