//go:build !linux

package server

import "os"

// secretFromReadOnlyMount: the Kubernetes Secret volume exception is
// Linux-only; elsewhere a secret file must be 0600.
func secretFromReadOnlyMount(*os.File, os.FileInfo) bool { return false }
