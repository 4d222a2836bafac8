package agent

import "context"

// PostJSON sends in as JSON to path on the server's agent API, over the
// node's mutual TLS client (HTTP/2: the connection the watch stream
// uses), and decodes a 2xx answer into out when it is not nil. Data-plane
// processes report with it (traffic records, wire.PathRecords). A non-2xx
// answer is a *ServerError. ErrNotAttested before Attest.
func (n *Node) PostJSON(ctx context.Context, path string, in, out any) error {
	if n.svid.Load() == nil || n.client.Load() == nil {
		return ErrNotAttested
	}
	return n.post(ctx, path, in, out)
}
