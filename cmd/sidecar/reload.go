package main

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

// watchSIGHUP reloads the TLS files on every SIGHUP until ctx ends or the
// returned stop is called (which waits for the watcher to finish). New
// connections use the new certificate; established ones keep theirs. A bad
// set of files is logged and the certificate in use stays. The signal is
// caught even without TLS, because its default action would kill the agent.
// Then, when set, then runs (the agent re-reads its config file's
// services).
func watchSIGHUP(ctx context.Context, cfg *Config, log *slog.Logger, then func(context.Context)) (stop func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
			}
			if cfg.TLS == nil {
				log.Info("SIGHUP: no TLS files to reload")
			} else if err := cfg.TLS.Reload(); err != nil {
				log.Error("SIGHUP: TLS files not reloaded; keeping the certificate in use", "err", err)
			}
			if then != nil {
				then(ctx)
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		cancel()
		wg.Wait()
	}
}
