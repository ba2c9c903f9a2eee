package inproc

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sidecarhq/sidecar/internal/logadapt"
)

// An accepted connection waits for its next request without a deadline,
// and for the rest of a request, or to write its answer, only so long.
func TestDeadlineConn_accepted(t *testing.T) {
	const timeout = 50 * time.Millisecond
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	srv := newDeadlineConn(a, true, timeout)
	buf := make([]byte, 8)

	// Idle: a request that comes after several timeouts is still read.
	go func() {
		time.Sleep(4 * timeout)
		b.Write([]byte{1})
	}()
	if n, err := srv.Read(buf); n != 1 || err != nil {
		t.Fatalf("idle read: %d, %v", n, err)
	}
	// The rest of the request never comes.
	start := time.Now()
	if _, err := srv.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read of a request stopped half-way: %v, want a deadline", err)
	}
	if d := time.Since(start); d > 20*timeout {
		t.Errorf("read gave up after %v, want about %v", d, timeout)
	}
	// An answer the peer does not read.
	if _, err := srv.Write([]byte("answer")); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write to a peer that does not read: %v, want a deadline", err)
	}
}

// After an answer, the connection is idle again; a caller's earlier
// deadline still holds.
func TestDeadlineConn_idleAfterAnswer(t *testing.T) {
	const timeout = 50 * time.Millisecond
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	srv := newDeadlineConn(a, true, timeout)
	buf := make([]byte, 8)
	go func() {
		b.Write([]byte{1})
		io.ReadFull(b, buf[:2])
		time.Sleep(4 * timeout)
		b.Write([]byte{2})
	}()
	if _, err := srv.Read(buf); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Write([]byte("ok")); err != nil {
		t.Fatal(err)
	}
	if n, err := srv.Read(buf); n != 1 || err != nil || buf[0] != 2 {
		t.Fatalf("read after the answer: %d, %v", n, err)
	}

	cli := newDeadlineConn(b, false, time.Minute)
	cli.SetDeadline(time.Now().Add(timeout))
	start := time.Now()
	if _, err := cli.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the caller's deadline: %v", err)
	}
	if d := time.Since(start); d > 20*timeout {
		t.Errorf("caller's deadline of %v held %v", timeout, d)
	}
}

// A Raft server over the TLS stream layer drops a connection whose request
// stops half-way instead of waiting on it for ever.
func TestStreamLayer_requestStoppedHalfway(t *testing.T) {
	loaders, err := newPKI(t.TempDir(), []string{"s0", "s1"})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := newStreamLayer("s0", loaders["s0"])
	if err != nil {
		t.Fatal(err)
	}
	srv.timeout = 100 * time.Millisecond
	discard := slog.New(slog.NewTextHandler(io.Discard, nil))
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream: srv, MaxPool: 1, Timeout: time.Second, Logger: logadapt.Hclog(discard, "raft-net"),
	})
	defer trans.Close()
	cli, err := newStreamLayer("s1", loaders["s1"])
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	conn, err := cli.Dial(raft.ServerAddress(srv.listenAddr()), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// An AppendEntries (type 0) whose msgpack body never ends.
	if _, err := conn.Write([]byte{0, 0x85}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the server still waits on the request after %v", time.Since(start))
	}
	if err == nil {
		t.Fatal("the server answered half a request")
	}
}
