package server

import "github.com/moatless/moatless/internal/detect"

// alerter sends findings and incidents to the configured sinks.
type alerter struct{}

func (a *alerter) configured() bool          { return false }
func (a *alerter) names() []string           { return nil }
func (a *alerter) incident(*detect.Incident) {}
func (a *alerter) finding(*detect.Finding)   {}
