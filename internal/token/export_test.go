package token

// SetMaxExchangeTree sets the bound on the tokens exchanged from one
// token, transitively, for a test; it returns the restore.
func SetMaxExchangeTree(n int) (restore func()) {
	old := maxExchangeTree
	maxExchangeTree = n
	return func() { maxExchangeTree = old }
}
