package dataplane

import (
	"context"
	"errors"
	"log/slog"
	"sync"
)

// LogLifecycle gives a long-running command's JSON log its shutdown lines:
// "shutting down" with the cause (for SIGTERM, "terminated signal
// received") as soon as ctx ends, and, from the returned func, "stopped"
// when the command has finished: at INFO when it ended cleanly (err nil,
// or ctx's cancellation), at ERROR with err otherwise. An operator reading
// the log of a restarted unit sees that it was asked to stop, and whether
// it drained before it went; the final error is a JSON line like every
// other (not a plain-text line in a JSON stream).
//
// The returned func must be called exactly once; it waits for the first
// line, so the lines are always in order. It returns whether err was a
// failure.
func LogLifecycle(ctx context.Context, log *slog.Logger) (stopped func(err error) (failed bool)) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	logCause := func() {
		log.Info("shutting down", "cause", context.Cause(ctx).Error())
	}
	wg.Go(func() {
		select {
		case <-ctx.Done():
			logCause()
		case <-done:
			// The command ended on its own; if ctx ended at the same
			// moment, the select may have picked this case.
			if ctx.Err() != nil {
				logCause()
			}
		}
	})
	return func(err error) bool {
		close(done)
		wg.Wait()
		if err == nil || (ctx.Err() != nil && errors.Is(err, context.Canceled)) {
			log.Info("stopped")
			return false
		}
		log.Error("stopped", "err", err)
		return true
	}
}
