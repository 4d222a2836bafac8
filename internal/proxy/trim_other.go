//go:build !linux

package proxy

// releaseStartupPages is Linux-only (MADV_PAGEOUT); elsewhere it does
// nothing.
func releaseStartupPages() (int, error) { return 0, nil }
