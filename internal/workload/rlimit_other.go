//go:build !unix

package workload

// defaultMaxConns: the Workload API is not served outside Linux.
func defaultMaxConns() int { return 256 }
