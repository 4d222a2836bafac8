//go:build !unix

package filelock

// Lock locks nothing where flock does not exist: the locks only guard
// against operator mistakes, and the processes that take them (server,
// agent, sidecar) run on Unix.
func Lock(string, bool) (func(), error) { return func() {}, nil }
