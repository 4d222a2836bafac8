//go:build !linux

package attest

import (
	"context"
	"errors"
	"runtime"

	"github.com/moatless/moatless/internal/wire"
)

// errUnixUnsupported is what the unix attestor answers outside Linux: it
// reads the kernel's peer credentials and /proc, which only Linux has.
var errUnixUnsupported = errors.New("attest: unix workload attestation needs Linux (procfs and SO_PEERCRED), not " + runtime.GOOS)

// Unix is the unix attestor. Outside Linux it attests nothing: every Bind
// and Attest fails, so no workload is ever served an identity (deny by
// default) on a system whose kernel cannot vouch for the caller.
type Unix struct{}

// NewUnix returns a unix attestor that refuses every peer (see Unix).
func NewUnix(UnixConfig) *Unix { return &Unix{} }

// Bind implements Binder; it always fails outside Linux.
func (*Unix) Bind(context.Context, Peer) (Image, error) { return Image{}, errUnixUnsupported }

// Attest implements Attestor; it always fails outside Linux.
func (*Unix) Attest(context.Context, Peer) ([]wire.Selector, error) {
	return nil, errUnixUnsupported
}
