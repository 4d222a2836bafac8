package workload

import (
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/moatless/moatless/internal/wire"
)

// noIdentity is the PermissionDenied answer to a caller with no identity
// to serve. When entries that match the caller (want, if not zero) were
// left out because their SPIFFE IDs are revoked, it says so, with when and
// why: "no identity issued" would send the operator looking for a missing
// registration entry.
func noIdentity(st *State, sels []wire.Selector, want spiffeid.ID) error {
	revoked := matching(&State{Identities: st.Revoked}, sels)
	var msgs []string
	for _, id := range revoked {
		if !want.IsZero() && id.SPIFFEID != want {
			continue
		}
		d, ok := st.Revocations.Detail(id.SPIFFEID.String())
		if !ok {
			d = wire.RevokedIDDetail{SPIFFEID: id.SPIFFEID.String()}
		}
		msgs = append(msgs, d.String())
	}
	if len(msgs) == 0 {
		return errNoIdentity
	}
	return status.Error(codes.PermissionDenied, "identity revoked: "+strings.Join(msgs, "; "))
}
