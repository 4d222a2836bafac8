package dataplane

import (
	"context"
	"log/slog"
	"net"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/moatless/moatless/internal/agent"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/proxy"
	"github.com/moatless/moatless/internal/wire"
)

// newRecorder builds the traffic recorder of a sidecar in join mode: its
// reports go to the server over the node's own connection.
func newRecorder(cfg config.Sidecar, node *agent.Node, reg prometheus.Registerer, log *slog.Logger) (*proxy.Recorder, error) {
	rc := proxy.RecorderConfig{
		Send:      recordSender(node),
		Component: "sidecar", Namespace: cfg.Namespace, Labels: cfg.Labels,
		Interval: cfg.Traffic.Interval.Std(), MaxEdges: cfg.Traffic.MaxEdges,
		Registerer: reg, Logger: log,
	}
	for _, in := range cfg.Inbound {
		port := in.Port
		if port == 0 {
			port = hostPortOf(in.App)
		}
		if port > 0 {
			rc.Ports = append(rc.Ports, port)
		}
	}
	for _, p := range cfg.Traffic.PII {
		oneIn, maxBytes := p.OneIn, p.MaxBytes
		if oneIn == 0 {
			oneIn = config.DefaultPIIOneIn
		}
		if maxBytes == 0 {
			maxBytes = config.DefaultPIIMaxBytes
		}
		rc.PII = append(rc.PII, proxy.PIIEdge{Source: p.Source, OneIn: oneIn, MaxBytes: maxBytes})
	}
	return proxy.NewRecorder(rc)
}

// NewGatewayRecorder builds the gateway's traffic recorder in join mode
// (default interval and bounds; no PII sampling: the gateway's upstream
// sidecars sample their own responses).
func NewGatewayRecorder(cfg config.Gateway, node *agent.Node, reg prometheus.Registerer, log *slog.Logger) (*proxy.Recorder, error) {
	rc := proxy.RecorderConfig{Send: recordSender(node), Component: "gateway", Namespace: cfg.Namespace, Labels: cfg.Labels,
		Registerer: reg, Logger: log}
	if p := hostPortOf(cfg.Listen); p > 0 {
		rc.Ports = []int{p}
	}
	return proxy.NewRecorder(rc)
}

// recordSender posts a report to the server over the node's own
// connection.
func recordSender(node *agent.Node) func(ctx context.Context, r *wire.RecordReport) error {
	return func(ctx context.Context, r *wire.RecordReport) error {
		return node.PostJSON(ctx, wire.PathRecords, r, nil)
	}
}

// hostPortOf is the port of "host:port", 0 for anything else (a unix
// socket app).
func hostPortOf(addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return n
}
