package wire

import "testing"

func TestCompareBundle(t *testing.T) {
	base := func(seq uint64) *Bundle {
		return &Bundle{TrustDomain: "example.org", SequenceNumber: seq, X509Authorities: [][]byte{[]byte("root-a"), []byte("root-b")},
			JWTAuthorities: []JWTAuthority{{KeyID: "k1", PublicKey: []byte("pub1")}}}
	}
	with := func(b *Bundle, f func(*Bundle)) *Bundle { f(b); return b }
	tests := []struct {
		name      string
		held, got *Bundle
		want      BundleOrder
	}{
		{"nothing_held", nil, base(3), BundleNewer},
		{"higher_sequence", base(3), base(4), BundleNewer},
		{"lower_sequence", base(4), base(3), BundleOlder},
		{"lower_sequence_same_content", base(4), with(base(3), func(b *Bundle) {}), BundleOlder},
		{"unsequenced_after_sequenced", base(4), base(0), BundleOlder},
		{"unsequenced_after_unsequenced", base(0), with(base(0), func(b *Bundle) { b.X509Authorities = b.X509Authorities[:1] }), BundleNewer},
		{"same_sequence_same_content", base(4), base(4), BundleSame},
		{"same_sequence_reordered", base(4), with(base(4), func(b *Bundle) {
			b.X509Authorities[0], b.X509Authorities[1] = b.X509Authorities[1], b.X509Authorities[0]
		}), BundleSame},
		{"same_sequence_refresh_hint_differs", base(4), with(base(4), func(b *Bundle) { b.RefreshHint = 7 }), BundleSame},
		{"same_sequence_root_dropped", base(4), with(base(4), func(b *Bundle) { b.X509Authorities = b.X509Authorities[1:] }), BundleForked},
		{"same_sequence_root_added", base(4), with(base(4), func(b *Bundle) { b.X509Authorities = append(b.X509Authorities, []byte("root-c")) }), BundleForked},
		{"same_sequence_taint_lost", with(base(4), func(b *Bundle) { b.TaintedX509Authorities = []string{"ab"} }), base(4), BundleForked},
		{"same_sequence_taint_case", with(base(4), func(b *Bundle) { b.TaintedX509Authorities = []string{"ab"} }), with(base(4), func(b *Bundle) { b.TaintedX509Authorities = []string{"AB"} }), BundleSame},
		{"same_sequence_jwt_key_differs", base(4), with(base(4), func(b *Bundle) { b.JWTAuthorities[0].PublicKey = []byte("pub2") }), BundleForked},
		{"same_sequence_jwt_taint_differs", base(4), with(base(4), func(b *Bundle) { b.JWTAuthorities[0].Tainted = true }), BundleForked},
		{"same_sequence_other_trust_domain", base(4), with(base(4), func(b *Bundle) { b.TrustDomain = "other.org" }), BundleForked},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CompareBundle(tt.held, tt.got); got != tt.want {
				t.Errorf("CompareBundle = %v, want %v", got, tt.want)
			}
		})
	}
}
