package telemetry

import "sync"

// FailureLog decides when to log the failures of an operation that is
// retried on a timer (a file re-read every few seconds): when a failure
// begins or its error changes, not on every attempt it lasts, and once
// when the operation works again. Without it a file left broken logs one
// error line per tick for as long as it stays broken, burying everything
// else; metrics still count every failed attempt.
//
// The zero value is ready to use; it keeps one state per operation name
// (what) and is safe for concurrent use.
type FailureLog struct {
	mu   sync.Mutex
	last map[string]string // what → the error last reported
}

// Failed records that what failed with err (non-nil) and reports whether
// to log it: true when err's text differs from the error last recorded
// for what, which includes the first failure after a success.
func (f *FailureLog) Failed(what string, err error) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	msg := err.Error()
	if prev, ok := f.last[what]; ok && prev == msg {
		return false
	}
	if f.last == nil {
		f.last = map[string]string{}
	}
	f.last[what] = msg
	return true
}

// Worked records that what succeeded and reports whether it was failing
// until now, i.e. whether to log that it works again.
func (f *FailureLog) Worked(what string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, failing := f.last[what]
	delete(f.last, what)
	return failing
}
