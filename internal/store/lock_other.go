//go:build !unix

package store

// lockFile is a no-op where flock does not exist: the lock only guards
// against operator mistakes, and Moatless servers run on Unix.
func lockFile(string, bool) (func(), error) { return func() {}, nil }
