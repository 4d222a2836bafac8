package cli

import (
	"fmt"
	"time"

	"github.com/moatless/moatless/internal/server"
)

// connectedCell is a status table's CONNECTED cell: "revoked" for a
// revoked node, whatever its connection, since it is cut off.
func connectedCell(connected bool, r server.Revocation) string {
	switch {
	case r.Revoked:
		return "revoked"
	case connected:
		return "yes"
	}
	return "no"
}

// revokedLine is the note printed under a status table for a revoked
// node: "ID: revoked at TIME (reason: …)".
func revokedLine(id string, r server.Revocation) string {
	s := id + ": revoked"
	if !r.RevokedAt.IsZero() {
		s += " at " + r.RevokedAt.Local().Format(time.RFC3339)
	}
	if r.RevocationReason != "" {
		s += fmt.Sprintf(" (reason: %s)", r.RevocationReason)
	}
	return s
}
