package authn

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports a Verifier's counters as Prometheus metrics, read
// from Stats at scrape time (nothing is added to the request path):
//
//	moatless_authn_tokens_accepted_total
//	moatless_authn_tokens_rejected_total{reason}      reason: Reason labels
//	moatless_authn_cache_lookups_total{result}        result: hit, miss
//	moatless_authn_cache_entries
//	moatless_authn_jwks_keys{source}
//	moatless_authn_jwks_fetches_total{source}
//	moatless_authn_jwks_fetch_failures_total{source}
//	moatless_authn_jwks_last_success_timestamp_seconds{source}
//
// source is a configured jwksUri without its query string (or "discovery
// <issuer>"): bounded by configuration, never by traffic.
type Collector struct {
	v *Verifier
}

// NewCollector returns a collector for v; register it with a registry.
func NewCollector(v *Verifier) *Collector { return &Collector{v: v} }

var (
	descAccepted     = prometheus.NewDesc("moatless_authn_tokens_accepted_total", "Request tokens accepted.", nil, nil)
	descRejected     = prometheus.NewDesc("moatless_authn_tokens_rejected_total", "Request tokens refused (HTTP 401), by reason.", []string{"reason"}, nil)
	descLookups      = prometheus.NewDesc("moatless_authn_cache_lookups_total", "Verified-token cache lookups, by result.", []string{"result"}, nil)
	descEntries      = prometheus.NewDesc("moatless_authn_cache_entries", "Tokens in the verified-token cache.", nil, nil)
	descKeys         = prometheus.NewDesc("moatless_authn_jwks_keys", "Usable keys in a remote key set (0: none fetched yet).", []string{"source"}, nil)
	descFetches      = prometheus.NewDesc("moatless_authn_jwks_fetches_total", "Fetch attempts of a remote key set.", []string{"source"}, nil)
	descFetchFails   = prometheus.NewDesc("moatless_authn_jwks_fetch_failures_total", "Failed fetches of a remote key set (the last good set is kept).", []string{"source"}, nil)
	descLastSuccess  = prometheus.NewDesc("moatless_authn_jwks_last_success_timestamp_seconds", "When a remote key set was last fetched successfully.", []string{"source"}, nil)
	collectorMetrics = []*prometheus.Desc{descAccepted, descRejected, descLookups, descEntries, descKeys, descFetches, descFetchFails, descLastSuccess}
)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range collectorMetrics {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.v.Stats()
	ch <- prometheus.MustNewConstMetric(descAccepted, prometheus.CounterValue, float64(s.Accepted))
	for _, r := range reasonLabels {
		ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(s.Rejected[r.label]), r.label)
	}
	ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(s.Rejected["other"]), "other")
	ch <- prometheus.MustNewConstMetric(descLookups, prometheus.CounterValue, float64(s.CacheHits), "hit")
	ch <- prometheus.MustNewConstMetric(descLookups, prometheus.CounterValue, float64(s.CacheMisses), "miss")
	ch <- prometheus.MustNewConstMetric(descEntries, prometheus.GaugeValue, float64(s.CacheEntries))
	for _, k := range s.KeySets {
		ch <- prometheus.MustNewConstMetric(descKeys, prometheus.GaugeValue, float64(k.Keys), k.Source)
		ch <- prometheus.MustNewConstMetric(descFetches, prometheus.CounterValue, float64(k.Fetches), k.Source)
		ch <- prometheus.MustNewConstMetric(descFetchFails, prometheus.CounterValue, float64(k.Failures), k.Source)
		if !k.LastSuccess.IsZero() {
			ch <- prometheus.MustNewConstMetric(descLastSuccess, prometheus.GaugeValue, float64(k.LastSuccess.UnixNano())/1e9, k.Source)
		}
	}
}

var _ prometheus.Collector = (*Collector)(nil)
