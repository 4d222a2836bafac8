package traffic

// Paths of a traffic record's overflow edges: where a reporter counts the
// requests it could not record on an edge of their own because its table
// for the window was full. No request path is one (they start with "/").
const (
	// OverflowPath: the table was full with other peers' edges; an
	// overflow edge that keeps its peer (source inbound, destination
	// outbound) has its requests' decision, reason and status, one that
	// names no one the decision "overflow".
	OverflowPath = "{overflow}"
	// OverflowPeerPath: the peer already had its share of the table (a
	// quarter of it): it made the table overflow, by calling more
	// distinct edges in one window than any ordinary caller does.
	OverflowPeerPath = "{overflow:peer}"
)

// IsOverflow reports whether path is an overflow edge's.
func IsOverflow(path string) bool { return path == OverflowPath || path == OverflowPeerPath }
