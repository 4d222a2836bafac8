package workload

import (
	"errors"
	"fmt"
	"sync"
)

// errTooManyConns is why a connection past a limit of connLimits is
// closed.
var errTooManyConns = errors.New("workload: too many open Workload API connections")

// connLimits counts the open Workload API connections, by uid and in all,
// and refuses those past its bounds (Config.MaxConnsPerUID, MaxConns).
// warn is called when a uid, or all callers, reach a bound, once until
// they fall below it again, so a flood does not flood the log too. Safe
// for concurrent use.
type connLimits struct {
	perUID, total int
	warn          func(uid uint32, open int, all bool)

	mu        sync.Mutex
	n         int
	byUID     map[uint32]int
	warnedUID map[uint32]bool
	warnedAll bool
}

func newConnLimits(perUID, total int, warn func(uid uint32, open int, all bool)) *connLimits {
	if perUID <= 0 {
		perUID = DefaultMaxConnsPerUID
	}
	if total <= 0 {
		total = defaultMaxConns()
	}
	return &connLimits{perUID: perUID, total: total, warn: warn, byUID: map[uint32]int{}, warnedUID: map[uint32]bool{}}
}

// acquire takes a slot for a connection of uid, or refuses it.
func (l *connLimits) acquire(uid uint32) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.n >= l.total:
		if !l.warnedAll {
			l.warnedAll = true
			l.warn(uid, l.n, true)
		}
		return fmt.Errorf("%w: %d in all", errTooManyConns, l.n)
	case l.byUID[uid] >= l.perUID:
		if !l.warnedUID[uid] {
			l.warnedUID[uid] = true
			l.warn(uid, l.byUID[uid], false)
		}
		return fmt.Errorf("%w: %d of uid %d", errTooManyConns, l.byUID[uid], uid)
	}
	l.n++
	l.byUID[uid]++
	return nil
}

// release gives back the slot of a connection of uid.
func (l *connLimits) release(uid uint32) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.n--
	if l.byUID[uid]--; l.byUID[uid] <= 0 {
		delete(l.byUID, uid)
	}
	if l.byUID[uid] < l.perUID {
		delete(l.warnedUID, uid)
	}
	if l.n < l.total {
		l.warnedAll = false
	}
}
