package proxy

import (
	"log/slog"
	"sync"
	"time"
)

var releaseOnce sync.Once

// settleDelay is when the executable's pages are released a second time:
// after the first reload intervals, handshakes and pool dials — code that
// runs once as traffic starts and would otherwise stay resident.
const settleDelay = 10 * time.Second

// releaseStartupPagesOnce releases the executable's startup pages the first
// time a sidecar of this process serves, and once more settleDelay later
// (see Config.KeepStartupPages). Both are process-wide and happen at most
// once per process.
func releaseStartupPagesOnce(log *slog.Logger) {
	releaseOnce.Do(func() {
		release := func(when string) {
			n, err := releaseStartupPages()
			if err != nil {
				log.Debug("releasing the executable's startup pages failed", "when", when, "err", err)
				return
			}
			log.Debug("released the executable's startup pages", "when", when, "bytes_advised", n)
		}
		release("serving")
		time.AfterFunc(settleDelay, func() { release("settled") })
	})
}
