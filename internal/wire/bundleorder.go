package wire

import (
	"fmt"
	"slices"
	"strings"
)

// BundleOrder is how a bundle received from a server relates to the one
// a data-plane process holds (see CompareBundle).
type BundleOrder int

const (
	// BundleNewer: a higher sequence number (or nothing held yet). Take it.
	BundleNewer BundleOrder = iota
	// BundleSame: the same sequence number and the same trust material.
	// Taking it changes nothing a peer is verified with.
	BundleSame
	// BundleOlder: a lower sequence number: a replica that has not yet
	// seen the latest CA change, or an older server version during an
	// upgrade. Refuse it: after `moatless ca revoke` it would bring the
	// revoked authority back into trust.
	BundleOlder
	// BundleForked: the same sequence number with other trust material:
	// two histories of one bundle (a store restored and changed again).
	// Neither can be told to be the newer; keep the one held.
	BundleForked
)

func (o BundleOrder) String() string {
	switch o {
	case BundleNewer:
		return "newer"
	case BundleSame:
		return "same"
	case BundleOlder:
		return "older"
	case BundleForked:
		return "forked"
	}
	return "unknown"
}

// CompareBundle tells how got relates to held, the bundle in force (nil:
// none). The server's sequence number grows with every change of the
// trust material (the X.509 and JWT authorities, and which are tainted),
// and a real server's starts at 1: sequence 0 means unsequenced, and an
// unsequenced bundle after an unsequenced one counts as newer (there is no
// order to keep), while one after a sequenced bundle is older. A bundle
// for another trust domain at the held sequence is forked.
func CompareBundle(held, got *Bundle) BundleOrder {
	switch {
	case held == nil:
		return BundleNewer
	case got.SequenceNumber > held.SequenceNumber:
		return BundleNewer
	case got.SequenceNumber < held.SequenceNumber:
		return BundleOlder
	case held.SequenceNumber == 0:
		return BundleNewer
	case sameTrust(held, got):
		return BundleSame
	}
	return BundleForked
}

// sameTrust reports whether a and b hold the same trust material, in any
// order: the trust domain, the X.509 authorities, the JWT authorities (key
// ID, key, taint) and the tainted X.509 authorities. The refresh hint and
// a JWT key's expiry are not trust material.
func sameTrust(a, b *Bundle) bool {
	if a.TrustDomain != b.TrustDomain {
		return false
	}
	set := func(b *Bundle) []string {
		var s []string
		for _, der := range b.X509Authorities {
			s = append(s, "x:"+string(der))
		}
		for _, t := range b.TaintedX509Authorities {
			s = append(s, "t:"+strings.ToLower(t))
		}
		for _, j := range b.JWTAuthorities {
			s = append(s, fmt.Sprintf("j:%q %x %t", j.KeyID, j.PublicKey, j.Tainted))
		}
		slices.Sort(s)
		return slices.Compact(s)
	}
	return slices.Equal(set(a), set(b))
}
