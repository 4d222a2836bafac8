package authn

import (
	"maps"
	"strings"
)

// splitClaims returns claims with every top-level claim named in names
// whose value is a string of at least one word replaced by a []any of its
// words: Istio's spaceDelimitedClaims, which Envoy applies when it writes
// the payload to the metadata authorization policies read
// (normalize_payload_in_metadata). Only the policy view changes; headers
// copied from claims keep the original string.
//
// Words are split by strings.Fields, the split the policy engine applies
// itself to "scope" and "permission", so naming one of those here changes
// no decision. (Envoy splits on U+0020 only; a tab or newline inside a
// claim value also separates words here.) A string without any word stays
// as it is, as in Envoy; values of other types are left alone.
//
// claims is never modified: when a claim is split the result is a shallow
// copy, so the map a token was parsed into is never written once it may be
// shared. The result is shared between every request presenting the same
// token and must be treated as read-only.
func splitClaims(claims map[string]any, names []string) map[string]any {
	out := claims
	copied := false
	for _, n := range names {
		s, ok := claims[n].(string)
		if !ok {
			continue
		}
		words := strings.Fields(s)
		if len(words) == 0 {
			continue
		}
		list := make([]any, len(words))
		for i, w := range words {
			list[i] = w
		}
		if !copied {
			out, copied = maps.Clone(claims), true
		}
		out[n] = list
	}
	return out
}
