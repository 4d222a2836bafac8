//go:build race

package gateway

// raceEnabled: the race detector makes Coraza and the Core Rule Set about
// 60 times slower, so tests that only measure rule semantics over many
// requests sample them under -race; make test runs them in full without it.
const raceEnabled = true
