package ca_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"sync"

	"github.com/moatless/moatless/internal/ca"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// memState keeps the sealed state in memory; the server keeps it in its
// SQL store.
type memState struct {
	mu   sync.Mutex
	blob []byte
}

func (m *memState) LoadCAState(context.Context) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.blob == nil {
		return nil, ca.ErrNoState
	}
	return m.blob, nil
}

func (m *memState) SaveCAState(_ context.Context, b []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.blob = b
	return nil
}

func Example() {
	ctx := context.Background()
	kek := make([]byte, ca.KEKSize)
	if _, err := rand.Read(kek); err != nil {
		panic(err)
	}
	c, err := ca.Open(ctx, ca.Options{
		TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"),
		State:       &memState{},
		KEK:         kek,
	})
	if err != nil {
		panic(err)
	}

	// The workload's key is made where the workload runs; only a CSR
	// travels. The SPIFFE ID comes from the registration, not the CSR.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	id := spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/web")
	svid, err := c.SignX509SVID(csr, id, 0)
	if err != nil {
		panic(err)
	}
	got, _, err := x509svid.Verify(svid.Chain, c.Bundle())
	fmt.Println(got, err)

	// The server calls Tick every few seconds and pushes the bundle when
	// it changed.
	changed, err := c.Tick(ctx)
	fmt.Println(changed, err)
	// Output:
	// spiffe://example.org/ns/default/sa/web <nil>
	// false <nil>
}
