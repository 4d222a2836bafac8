//go:build race

package detect

// raceEnabled shrinks the generated week's mesh under the race detector,
// which makes the detectors ten times slower; the numbers in
// docs/benchmarks.md come from the full mesh without it.
const raceEnabled = true
