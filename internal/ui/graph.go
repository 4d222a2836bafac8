package ui

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/audit"
)

// The service graph and the decision log are built from the decision
// records sidecars and gateways report (audit kinds decision.*): every
// denied or unauthenticated request, and every allowed one an AUDIT
// policy matched. An edge runs from the caller (its SPIFFE ID, or its IP
// for a plaintext caller) to the reporting workload (the sidecar's SPIFFE
// ID), which is the service that was called.

// decisionKinds selects the decision records.
var decisionKinds = []string{"decision."}

// graphRecords bounds how many of the newest decision records the graph
// reads: enough for a picture of the recent past, bounded in time and
// memory whatever the log's size.
const graphRecords = 5000

// maxGraphNodes bounds the drawing; beyond it the edge table still lists
// every edge.
const maxGraphNodes = 60

// Edge is one caller → callee pair with what was decided on it.
type Edge struct {
	From, To string
	// Denied counts deny and unauthenticated decisions, Allowed the
	// allowed requests an AUDIT policy recorded.
	Denied, Allowed int
	// Last is the newest decision on the edge, with its policy and rule.
	Last                   time.Time
	LastDecision, Policy   string
	Rule, Reason, Endpoint string
}

// Class is the edge's drawing class: allowed, denied or mixed.
func (e *Edge) Class() string {
	switch {
	case e.Denied > 0 && e.Allowed > 0:
		return "mixed"
	case e.Denied > 0:
		return "denied"
	default:
		return "allowed"
	}
}

// graphNode is a drawn identity.
type graphNode struct {
	ID      string
	Label   string
	X, Y    int
	Revoked bool
	// Risk is the identity's risk score now (0: no open finding).
	Risk float64
}

// drawnEdge is an edge with its path in the drawing.
type drawnEdge struct {
	*Edge
	Path       string
	LX, LY     int // label position
	Unresolved bool
}

// graph is the graph page's data.
type graph struct {
	Edges          []*Edge
	Nodes          []graphNode
	Drawn          []drawnEdge
	Width, Height  int
	Records        int
	Oldest, Newest time.Time
	// Truncated: the graph read graphRecords records and there are more.
	Truncated bool
	// TooMany: more identities than the drawing shows.
	TooMany int
}

// Drawing geometry (SVG user units).
const (
	nodeW, nodeH = 280, 30
	colGap       = 180
	rowGap       = 22
	margin       = 20
	// loopRoom leaves space left and right of the columns for loops and
	// backward curves.
	loopRoom = 80
)

// buildGraph aggregates decision records (newest first, as AuditRecords
// returns them) into edges and lays them out: each identity in a column
// by its longest chain of callers (a cycle is cut where it closes), so
// traffic flows left to right.
func buildGraph(recs []audit.Record, revoked map[string]bool) graph {
	var g graph
	byPair := map[[2]string]*Edge{}
	for _, r := range recs {
		if !strings.HasPrefix(r.Kind, "decision.") {
			continue
		}
		from, to := r.Subject, r.Actor
		if from == "" {
			from = "(unknown caller)"
		}
		k := [2]string{from, to}
		e := byPair[k]
		if e == nil {
			e = &Edge{From: from, To: to, Last: r.Time, LastDecision: r.Details["decision"], Policy: r.Details["policy"],
				Rule: r.Details["rule"], Reason: r.Details["reason_code"], Endpoint: endpoint(r.Details)}
			if e.Policy == "" {
				e.Policy = r.Details["audit_policy"]
			}
			byPair[k] = e
			g.Edges = append(g.Edges, e)
		}
		if r.Kind == audit.KindDecisionAudit {
			e.Allowed++
		} else {
			e.Denied++
		}
		g.Records++
		if g.Newest.IsZero() || r.Time.After(g.Newest) {
			g.Newest = r.Time
		}
		if g.Oldest.IsZero() || r.Time.Before(g.Oldest) {
			g.Oldest = r.Time
		}
	}
	// Denied edges first, then by volume.
	slices.SortStableFunc(g.Edges, func(a, b *Edge) int {
		if (a.Denied > 0) != (b.Denied > 0) {
			if a.Denied > 0 {
				return -1
			}
			return 1
		}
		if d := (b.Denied + b.Allowed) - (a.Denied + a.Allowed); d != 0 {
			return d
		}
		return strings.Compare(a.From+" "+a.To, b.From+" "+b.To)
	})
	g.layout(revoked)
	return g
}

// endpoint is "METHOD path" of a decision, or its destination port.
func endpoint(d map[string]string) string {
	if d["method"] != "" || d["path"] != "" {
		return strings.TrimSpace(d["method"] + " " + d["path"])
	}
	return d["destination"]
}

// layout places the identities of the busiest edges, at most
// maxGraphNodes of them, and routes the edges between them.
func (g *graph) layout(revoked map[string]bool) {
	var ids []string
	seen := map[string]bool{}
	var drawn []*Edge
	for _, e := range g.Edges {
		add := 0
		for _, id := range []string{e.From, e.To} {
			if !seen[id] {
				add++
			}
		}
		if len(ids)+add > maxGraphNodes {
			g.TooMany++
			continue
		}
		for _, id := range []string{e.From, e.To} {
			if !seen[id] {
				seen[id] = true
				ids = append(ids, id)
			}
		}
		drawn = append(drawn, e)
	}
	slices.Sort(ids)
	// Longest-path layering; at most len(ids) rounds, so a cycle stops
	// growing once every node has been pushed as far as it can go.
	col := map[string]int{}
	for range ids {
		changed := false
		for _, e := range drawn {
			if e.From != e.To && col[e.To] < col[e.From]+1 && col[e.From]+1 < len(ids) {
				col[e.To] = col[e.From] + 1
				changed = true
			}
		}
		if !changed {
			break
		}
	}
	rows := map[int]int{}
	pos := map[string]graphNode{}
	maxCol, maxRow := 0, 0
	for _, id := range ids {
		c := col[id]
		n := graphNode{ID: id, Label: shortID(id), X: margin + loopRoom + c*(nodeW+colGap), Y: margin + rows[c]*(nodeH+rowGap), Revoked: revoked[id]}
		rows[c]++
		maxCol, maxRow = max(maxCol, c), max(maxRow, rows[c])
		pos[id] = n
		g.Nodes = append(g.Nodes, n)
	}
	g.Width = 2*(margin+loopRoom) + (maxCol+1)*nodeW + maxCol*colGap
	g.Height = 2*margin + maxRow*(nodeH+rowGap)
	for _, e := range drawn {
		a, b := pos[e.From], pos[e.To]
		var d drawnEdge
		d.Edge = e
		x1, y1 := a.X+nodeW, a.Y+nodeH/2
		x2, y2 := b.X, b.Y+nodeH/2
		switch {
		case e.From == e.To: // a loop on the right side
			d.Path = fmt.Sprintf("M%d %d C%d %d %d %d %d %d", x1, y1-6, x1+60, y1-40, x1+60, y1+40, x1, y1+6)
			d.LX, d.LY = x1+50, y1
		case b.X > a.X: // forward: a curve between the columns
			mx := (x1 + x2) / 2
			d.Path = fmt.Sprintf("M%d %d C%d %d %d %d %d %d", x1, y1, mx, y1, mx, y2, x2, y2)
			d.LX, d.LY = mx, (y1+y2)/2-4
		default: // backward or within a column: around the left side
			x1, x2 = a.X, b.X
			out := min(x1, x2) - loopRoom + 10
			d.Path = fmt.Sprintf("M%d %d C%d %d %d %d %d %d", x1, y1, out, y1, out, y2, x2, y2)
			d.LX, d.LY = out+20, (y1+y2)/2
			d.Unresolved = true
		}
		g.Drawn = append(g.Drawn, d)
	}
}

// shortID is a SPIFFE ID without its scheme and trust domain
// ("ns/prod/sa/reports"), for labels; the full ID is the node's title.
func shortID(id string) string {
	if rest, ok := strings.CutPrefix(id, "spiffe://"); ok {
		if _, path, ok := strings.Cut(rest, "/"); ok {
			id = path
		}
	}
	if len(id) > 36 {
		id = "…" + id[len(id)-35:]
	}
	return id
}

// graphRecords reads the newest graphRecords decision records. From an
// EventSource it decodes the details of the newest record of each
// (caller, callee) pair only: buildGraph reads no other record's details.
func (u *UI) graphRecords(ctx context.Context) ([]audit.Record, uint64, error) {
	es, ok := u.cfg.Records.(EventSource)
	if !ok {
		return u.cfg.Records.AuditRecords(ctx, 0, graphRecords, decisionKinds)
	}
	evs, next, err := es.AuditEvents(ctx, graphRecords, decisionKinds)
	if err != nil {
		return nil, 0, err
	}
	recs := make([]audit.Record, len(evs))
	seen := make(map[[2]string]bool)
	for i, ev := range evs {
		recs[i] = audit.Record{Seq: ev.Seq, Event: audit.Event{Time: ev.Time, Kind: ev.Kind, Actor: ev.Actor, Subject: ev.Subject, Outcome: ev.Outcome}}
		if k := [2]string{ev.Subject, ev.Actor}; !seen[k] {
			seen[k] = true
			if err := json.Unmarshal(ev.Details, &recs[i].Details); err != nil {
				return nil, 0, fmt.Errorf("ui: audit record %d: details are not a JSON object of strings: %w", ev.Seq, err)
			}
		}
	}
	return recs, next, nil
}

func (u *UI) graphPage(q *request) {
	recs, next, err := u.graphRecords(q.ctx)
	if err != nil {
		u.fail(q, "Service graph", err)
		return
	}
	revoked, err := u.revoked(q)
	if err != nil {
		u.fail(q, "Service graph", err)
		return
	}
	risks, err := u.cfg.Findings.Risks(q.ctx)
	if err != nil {
		u.fail(q, "Service graph", err)
		return
	}
	g := buildGraph(recs, revoked)
	for i := range g.Nodes {
		g.Nodes[i].Risk = risks[g.Nodes[i].ID]
	}
	g.Truncated = next != 0
	u.show(q, http.StatusOK, "graph", &page{Title: "Service graph", Nav: "graph", Refresh: 10 * time.Second, Data: g})
}

// decisionsData is a page of decision records.
type decisionsData struct {
	Records []audit.Record
	Next    uint64
	// ID is the identity the page is narrowed to ("" for all): the
	// decisions it made as caller or received as callee, among the
	// newest graphRecords.
	ID string
}

// maxIDParam bounds the id filter (a SPIFFE ID is at most 2048 bytes).
const maxIDParam = 2048

func (u *UI) decisions(q *request) {
	before, ok := u.beforeParam(q, "Decisions")
	if !ok {
		return
	}
	id := q.r.URL.Query().Get("id")
	if len(id) > maxIDParam {
		u.show(q, http.StatusBadRequest, "error", &page{Title: "Decisions", FlashErr: "id: too long"})
		return
	}
	limit := 100
	if id != "" {
		limit = graphRecords
	}
	recs, next, err := u.cfg.Records.AuditRecords(q.ctx, before, limit, decisionKinds)
	if err != nil {
		u.fail(q, "Decisions", err)
		return
	}
	d := decisionsData{Records: recs, Next: next, ID: id}
	if id != "" {
		// One identity's decisions among the newest graphRecords: the
		// page the graph links each node to.
		d.Records, d.Next = nil, 0
		for _, r := range recs {
			if r.Subject == id || r.Actor == id {
				d.Records = append(d.Records, r)
			}
		}
	}
	p := &page{Title: "Decisions", Nav: "decisions", Data: d}
	if id != "" {
		// The refresh keeps the page narrowed to the identity.
		p.Path = Prefix + "/decisions?" + url.Values{"id": {id}}.Encode()
	}
	if before == 0 {
		p.Refresh = 5 * time.Second
	}
	u.show(q, http.StatusOK, "decisions", p)
}
