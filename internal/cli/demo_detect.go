package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/detect"
	"github.com/moatless/moatless/internal/server"
)

// The demo's detection and response: the server learns from the
// sidecars' traffic records (every second in the demo), and a playbook
// isolates any prod identity whose risk reaches 0.75.

// demoExportOrders is how many orders GET /orders/export returns: about
// 1 MiB.
const demoExportOrders = 5500

// demoServerConfig lowers the absolute exfiltration threshold for the
// reports job to 4 MiB a minute (the default, 100 MB, would take the
// demo a while to reach), as a team would for a job whose normal export
// is small, and names the gateway a relay: what its upstreams refuse is
// what its internet clients asked for.
const demoServerConfig = `# moatless demo: the server's detection settings (docs/detect.md)
detect:
  relays: ["` + demoGatewayID + `"]
  services:
  - match: "spiffe://` + demoTrustDomain + `/ns/prod/sa/reports"
    bytes_per_minute: 4194304
`

const demoPlaybook = `apiVersion: moatless.io/v1alpha1
kind: Playbook
metadata: {name: contain-prod}
spec:
  trigger: {risk: 0.75, identities: ["spiffe://` + demoTrustDomain + `/ns/prod/*"]}
  steps:
  - action: notify
  - action: isolate
`

// demoProbePaths are what a compromised job tries on orders: none is
// allowed to it (it may only GET /orders/*).
var demoProbePaths = []string{"/admin", "/admin/users", "/internal/config", "/actuator/env", "/.git/config",
	"/debug/pprof/", "/metrics", "/orders", "/api/v1/users", "/backup.sql"}

// demoProbes is how many probing requests the compromised job makes:
// above the default deny burst (20 a minute: a medium probing finding).
const demoProbes = 40

// demoContainment is the timeline the demo measured for the compromised
// job, in milliseconds after its first bad request.
type demoContainment struct {
	Incident         string   `json:"incident"`
	State            string   `json:"state"`
	Playbook         string   `json:"playbook"`
	Findings         []string `json:"findings"`
	Risk             float64  `json:"risk"`
	DetectedMS       int64    `json:"detected_ms"`
	ContainedMS      int64    `json:"contained_ms"`
	LastSidecarMS    int64    `json:"last_sidecar_refusing_ms"`
	Sidecars         int      `json:"sidecars"`
	BytesBeforeCut   int64    `json:"bytes_before_cut"`
	ExportsBeforeCut int      `json:"exports_before_cut"`
}

func (d *demo) applyPlaybook(ctx context.Context) error {
	req := server.PlaybookApplyRequest{Files: []server.PolicyFile{{Name: "playbook.yaml", Content: demoPlaybook}}}
	if err := d.admin.do(ctx, "POST", server.PathAdminPlaybooks, req, nil); err != nil {
		return fmt.Errorf("apply playbook: %w", err)
	}
	d.logf("applied playbook contain-prod: at risk 0.75, notify and isolate (revoke everywhere, cut its egress)")
	return nil
}

// compromise plays the compromised reports job: it probes orders for
// paths it may not call, then pulls the bulk export until the mesh cuts
// it off. The rows are the probing, the pulls, the incident and the
// refusal that follows; d.containment gets the timeline.
func (d *demo) compromise(ctx context.Context, step int, send func(addr, method, path, bearer, rid string) (int, http.Header)) ([]demoRow, error) {
	rep := d.sidecars["reports"]
	out := rep.outbound["orders"]
	var rows []demoRow
	d.logf("the reports job is compromised: it probes orders and pulls the bulk export")
	first := time.Now()
	denied := 0
	for i := range demoProbes {
		st, _ := send(out, "GET", demoProbePaths[i%len(demoProbePaths)], "", fmt.Sprintf("demo-probe-%d", i))
		if outcome(st) == "deny" {
			denied++
		}
	}
	step++
	res := "deny"
	if denied != demoProbes {
		res = fmt.Sprintf("%d of %d denied", denied, demoProbes)
	}
	rows = append(rows, demoRow{Step: step, Caller: "reports (compromised)", Callee: "orders", Method: "GET", Path: "/admin, /.git/config, …",
		Note:     fmt.Sprintf("probing: %d requests for %d paths it may not call", demoProbes, len(demoProbePaths)),
		Expected: "deny", Result: res, Policy: d.decisionFor("orders", "demo-probe-0", http.StatusForbidden)})

	// Pull the export until refused; the sidecar's records reach the
	// server every second.
	plain := &http.Client{Timeout: 10 * time.Second}
	var pulled int64
	exports, last := 0, 0
	waitUntil(ctx, 30*time.Second, "the compromised job to be cut off", func() bool {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+out+"/orders/export", nil)
		req.Header.Set(hdrRequestID, fmt.Sprintf("demo-export-%d", exports))
		resp, err := plain.Do(req)
		if err != nil {
			last = 0
			return true
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		last = resp.StatusCode
		if outcome(last) != "allow" {
			return true
		}
		pulled += n
		exports++
		return false
	})
	step++
	rows = append(rows, demoRow{Step: step, Caller: "reports (compromised)", Callee: "orders", Method: "GET", Path: "/orders/export",
		Note:     fmt.Sprintf("bulk pull, again and again: %d exports (%.1f MiB) left before the mesh cut it off", exports, float64(pulled)/(1<<20)),
		Expected: "refused", Result: outcome(last), Policy: "revoked identity"})

	c, err := d.containmentOf(ctx, rep.spiffeID, first)
	if err != nil {
		return nil, err
	}
	c.BytesBeforeCut, c.ExportsBeforeCut = pulled, exports
	d.containment = &c
	step++
	rows = append(rows, demoRow{Step: step, Caller: "moatless server", Callee: "reports", Method: "isolate", Path: "-",
		Note: fmt.Sprintf("incident %s: findings %s, risk %.2f; playbook %s ran notify, isolate. After the first bad request: detected %s, isolated %s, the last of %d sidecars refusing it %s",
			c.Incident, strings.Join(c.Findings, " + "), c.Risk, c.Playbook, ms(c.DetectedMS), ms(c.ContainedMS), c.Sidecars, ms(c.LastSidecarMS)),
		Expected: detect.IncidentContained, Result: c.State, Policy: "playbook " + c.Playbook})
	return rows, nil
}

func ms(v int64) string { return fmt.Sprintf("%d ms", v) }

// containmentOf waits for the incident about id to be contained, then for
// every other sidecar to acknowledge the change that revoked id (a
// sidecar acknowledges an update after applying it: from then on it
// refuses id and has closed its connections), and returns the timeline
// from first.
func (d *demo) containmentOf(ctx context.Context, id string, first time.Time) (demoContainment, error) {
	var inc detect.Incident
	err := waitUntil(ctx, 30*time.Second, "the incident about "+id+" to be contained", func() bool {
		var page server.Page[detect.Incident]
		if d.admin.do(ctx, "GET", server.PathAdminIncidents, nil, &page) != nil {
			return false
		}
		for _, i := range page.Items {
			if i.Identity == id && !i.ContainedAt.IsZero() {
				inc = i
				return true
			}
		}
		return false
	})
	if err != nil {
		return demoContainment{}, err
	}
	c := demoContainment{Incident: inc.ID, State: inc.State, Playbook: inc.Playbook, Risk: inc.Risk,
		DetectedMS: inc.DetectedAt.Sub(first).Milliseconds(), ContainedMS: inc.ContainedAt.Sub(first).Milliseconds()}
	// Detection is the first finding raised after the first bad request
	// (an earlier one about the job, a new edge say, is not about what
	// it did once compromised).
	var detected time.Time
	for _, fid := range inc.Findings {
		var f detect.Finding
		if d.admin.do(ctx, "GET", server.PathAdminFindings+"/"+fid, nil, &f) == nil {
			c.Findings = append(c.Findings, fmt.Sprintf("%s (%s)", f.Detector, f.Severity))
			if !f.Time.Before(first) && (detected.IsZero() || f.Time.Before(detected)) {
				detected = f.Time
			}
		}
	}
	if !detected.IsZero() {
		c.DetectedMS = detected.Sub(first).Milliseconds()
	}
	sort.Strings(c.Findings)
	var lastAck time.Time
	err = waitUntil(ctx, 30*time.Second, "every sidecar to apply the revocation", func() bool {
		var nodes []server.NodeStatus
		if d.admin.do(ctx, "GET", server.PathAdminNodes, nil, &nodes) != nil {
			return false
		}
		n := 0
		lastAck = time.Time{}
		for _, nd := range nodes {
			if nd.SPIFFEID == id || nd.Component != "sidecar" {
				continue
			}
			// In sync after the revocation: it acknowledged it, or a
			// later change.
			if !nd.InSync {
				return false
			}
			n++
			if nd.LastAck.After(lastAck) {
				lastAck = nd.LastAck
			}
		}
		c.Sidecars = n
		return n > 0
	})
	if err != nil {
		return demoContainment{}, err
	}
	c.LastSidecarMS = lastAck.Sub(first).Milliseconds()
	return c, nil
}
