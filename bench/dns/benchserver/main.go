// Command benchserver serves sidecar's DNS interface over an in-memory
// registry holding one service of N passing instances, as a target for
// bench/dns/run.sh while no agent binary wires the DNS server.
//
//	benchserver -addr 127.0.0.1:0 -addr-file /tmp/addr -instances 50
//
// It writes the address it serves on to -addr-file once it answers, and
// runs until SIGINT or SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/sidecarhq/sidecar/dnsserver"
	"github.com/sidecarhq/sidecar/fsm"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:]))
}

func run(ctx context.Context, args []string) int {
	fs := flag.NewFlagSet("benchserver", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "DNS ip:port (UDP and TCP)")
	addrFile := fs.String("addr-file", "", "write the address served to this file once serving")
	service := fs.String("service", "bench", "service name")
	n := fs.Int("instances", 50, "passing instances of the service")
	maxUDP := fs.Int("max-udp-size", dnsserver.DefaultConfig().MaxUDPSize, "largest UDP answer to an EDNS0 query")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *n < 1 || *n > 10000 {
		fmt.Fprintln(os.Stderr, "benchserver: -instances must be 1-10000")
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			log.Error("cpu profile", "err", err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Error("cpu profile", "err", err)
			return 1
		}
		defer pprof.StopCPUProfile()
	}

	reg, err := registry(*service, *n)
	if err != nil {
		log.Error("build registry", "err", err)
		return 1
	}
	cfg := dnsserver.DefaultConfig()
	cfg.Addr = *addr
	cfg.MaxUDPSize = *maxUDP
	cfg.Logger = log
	srv, err := dnsserver.New(cfg, reg, nil)
	if err != nil {
		log.Error("dns server", "err", err)
		return 1
	}
	if err := srv.Start(); err != nil {
		log.Error("dns server", "err", err)
		return 1
	}
	if *addrFile != "" {
		if err := os.WriteFile(*addrFile, []byte(srv.Addr()+"\n"), 0o644); err != nil {
			log.Error("write addr file", "err", err)
			_ = srv.Close()
			return 1
		}
	}
	log.Info("serving", "service", *service, "instances", *n, "addr", srv.Addr())
	if err := srv.Run(ctx); err != nil {
		log.Error("dns server", "err", err)
		return 1
	}
	return 0
}

// registry fills an FSM the way Raft would: encoded commands applied in
// order.
func registry(service string, n int) (*fsm.FSM, error) {
	f := fsm.New()
	var index uint64
	apply := func(c fsm.Command) error {
		data, err := fsm.Encode(c)
		if err != nil {
			return err
		}
		index++
		if res := f.ApplyBytes(index, data); res.Err != nil {
			return fmt.Errorf("apply %s: %w", c.Type(), res.Err)
		}
		return nil
	}
	if err := apply(&fsm.RegisterNode{Name: "bench", Address: "10.9.0.1"}); err != nil {
		return nil, err
	}
	for i := range n {
		err := apply(&fsm.RegisterInstance{Instance: fsm.Instance{
			ID:      fmt.Sprintf("%s-%d", service, i),
			Name:    service,
			Node:    "bench",
			Address: fmt.Sprintf("10.2.%d.%d", i/250, i%250+1),
			Port:    8000 + i%1000,
		}})
		if err != nil {
			return nil, err
		}
	}
	return f, nil
}
