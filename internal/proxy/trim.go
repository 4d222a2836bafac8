package proxy

import (
	"log/slog"
	"sync"
)

var releaseOnce sync.Once

// releaseStartupPagesOnce releases the executable's startup pages the first
// time a sidecar of this process serves (see Config.KeepStartupPages).
func releaseStartupPagesOnce(log *slog.Logger) {
	releaseOnce.Do(func() {
		n, err := releaseStartupPages()
		if err != nil {
			log.Debug("releasing the executable's startup pages failed", "err", err)
			return
		}
		log.Debug("released the executable's startup pages", "bytes_advised", n)
	})
}
