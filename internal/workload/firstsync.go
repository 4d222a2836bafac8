package workload

import (
	"context"
	"time"
)

// DefaultFirstSyncWait is Config.FirstSyncWait's default.
const DefaultFirstSyncWait = 10 * time.Second

// Syncer is an optional capability of a Source that starts empty and is
// filled from a server: Synced is closed once it holds what the server's
// first answer asked for (the agent's cache: entries received, their SVIDs
// signed). Before that, "no identity issued" would be wrong for a workload
// that has one, so the server holds calls until it is closed, at most
// Config.FirstSyncWait.
type Syncer interface {
	Synced() <-chan struct{}
}

// waitFirstSync holds a call made before the source's first complete
// sync until it completes, the call's context ends, or FirstSyncWait
// passed since the call arrived; then the call is answered from whatever
// the source holds (a server that cannot be reached must not hang
// workloads forever). Sources that are not Syncers are not waited for.
func (s *Server) waitFirstSync(ctx context.Context) {
	sy, ok := s.cfg.Source.(Syncer)
	if !ok {
		return
	}
	done := sy.Synced()
	select {
	case <-done:
		return
	default:
	}
	wait := s.cfg.FirstSyncWait
	if wait <= 0 {
		wait = DefaultFirstSyncWait
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-done:
	case <-ctx.Done():
	case <-t.C:
		s.log.Warn("answering a Workload API call before the first sync with the server completed", "waited", wait.String())
	}
}
