// Package netpol turns Istio AuthorizationPolicies into Kubernetes
// NetworkPolicies: segmentation at L4 as a second layer under the
// sidecars' mTLS authorization, so a workload whose sidecar is bypassed or
// misconfigured is still fenced by the cluster network.
//
// The mapping (docs/policy.md) is conservative in one direction only: a
// NetworkPolicy never allows less than its AuthorizationPolicy, because
// it can express less. What L4 cannot see (service accounts without a pod
// label for them, request principals, HTTP methods, paths and hosts,
// "not" fields, when conditions) is widened away and named in the
// object's moatless.io/widened annotation and in a warning; DENY and
// CUSTOM policies cannot narrow an L4 allow-list and are skipped with a
// warning (the sidecars still enforce them). Both systems deny by default
// once any policy selects a workload, and allow what any policy allows, so
// ALLOW policies map one to one.
//
// The output is plain YAML built from this package's own types; the
// tests check it against k8s.io/api's networking/v1 types, which the
// binary does not need.
package netpol

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	securityv1beta1 "istio.io/api/security/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/moatless/moatless/internal/policy"
)

// Options tune Convert.
type Options struct {
	// RootNamespace is the mesh-wide policy namespace
	// (policy.DefaultRootNamespace when empty). A selector-less policy
	// there applies to every namespace, which one namespaced
	// NetworkPolicy cannot; it is skipped with a warning.
	RootNamespace string
	// ServiceAccountLabel, when set, is a pod label whose value is the
	// pod's service account: principals and serviceAccounts then select
	// those pods, not their whole namespace.
	ServiceAccountLabel string
	// Ports maps a workload port as policies see it to the port the
	// sidecar listens on in front of it (NetworkPolicy filters the port
	// traffic arrives at). Ports not in the map are kept as they are.
	Ports map[int]int
}

// NamespaceLabel is the label Kubernetes sets on every namespace to its
// name.
const NamespaceLabel = "kubernetes.io/metadata.name"

// Result is Convert's output.
type Result struct {
	Policies []NetworkPolicy
	// Warnings say what was widened or skipped, one line each, naming the
	// AuthorizationPolicy.
	Warnings []string
}

// Convert maps the AuthorizationPolicies among docs (other kinds are
// ignored) to NetworkPolicies, sorted by namespace and name.
func Convert(docs []policy.Document, o Options) Result {
	if o.RootNamespace == "" {
		o.RootNamespace = policy.DefaultRootNamespace
	}
	var res Result
	for i := range docs {
		d := &docs[i]
		ap, ok := d.Spec.(*securityv1beta1.AuthorizationPolicy)
		if !ok {
			continue
		}
		warn := func(format string, args ...any) {
			res.Warnings = append(res.Warnings, fmt.Sprintf("AuthorizationPolicy %s: ", d.Ref())+fmt.Sprintf(format, args...))
		}
		switch {
		case d.DryRun:
			warn("dry-run: not enforced, no NetworkPolicy")
			continue
		case ap.GetAction() == securityv1beta1.AuthorizationPolicy_AUDIT:
			continue // changes no decision
		case ap.GetAction() == securityv1beta1.AuthorizationPolicy_DENY:
			warn("DENY cannot narrow an L4 allow-list: skipped (the sidecars enforce it)")
			continue
		case ap.GetAction() == securityv1beta1.AuthorizationPolicy_CUSTOM:
			warn("CUSTOM (an external authorizer) has no L4 form: skipped (the sidecars enforce it)")
			continue
		case ap.GetTargetRef() != nil || len(ap.GetTargetRefs()) > 0:
			warn("targetRefs select gateways, not pods: skipped")
			continue
		case d.Namespace == o.RootNamespace && len(ap.GetSelector().GetMatchLabels()) == 0:
			warn("mesh-wide (root namespace %s, no selector): a NetworkPolicy is per namespace; apply one per namespace yourself", o.RootNamespace)
			continue
		}
		np, widened := convertAllow(d, ap, o)
		if len(widened) > 0 {
			np.Metadata.Annotations["moatless.io/widened"] = strings.Join(widened, ", ")
			warn("widened at L4: %s", strings.Join(widened, ", "))
		}
		res.Policies = append(res.Policies, np)
	}
	sort.Slice(res.Policies, func(i, j int) bool {
		a, b := res.Policies[i].Metadata, res.Policies[j].Metadata
		return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
	})
	return res
}

// convertAllow maps one ALLOW policy; widened lists what was dropped.
func convertAllow(d *policy.Document, ap *securityv1beta1.AuthorizationPolicy, o Options) (NetworkPolicy, []string) {
	np := NetworkPolicy{
		APIVersion: "networking.k8s.io/v1",
		Kind:       "NetworkPolicy",
		Metadata: Metadata{
			Name:        "moatless-" + d.Name,
			Namespace:   d.Namespace,
			Labels:      map[string]string{"app.kubernetes.io/managed-by": "moatless"},
			Annotations: map[string]string{"moatless.io/source": "AuthorizationPolicy " + d.Ref()},
		},
		Spec: Spec{
			PodSelector: LabelSelector{MatchLabels: ap.GetSelector().GetMatchLabels()},
			PolicyTypes: []string{"Ingress"},
			// An ALLOW policy without rules matches nothing: deny all,
			// which an empty ingress list says.
			Ingress: []IngressRule{},
		},
	}
	w := &widening{}
	for ri, r := range ap.GetRules() {
		path := fmt.Sprintf("rules[%d]", ri)
		rule := IngressRule{}
		if len(r.GetFrom()) > 0 {
			var peers []Peer
			any := false
			for fi, f := range r.GetFrom() {
				ps, all := sourcePeers(f.GetSource(), o, w, fmt.Sprintf("%s.from[%d].source", path, fi))
				if all {
					any = true
				}
				peers = append(peers, ps...)
			}
			if !any {
				rule.From = dedupePeers(peers)
			}
		}
		if len(r.GetTo()) > 0 {
			var ports []Port
			any := false
			for ti, t := range r.GetTo() {
				ps, all := operationPorts(t.GetOperation(), o, w, fmt.Sprintf("%s.to[%d].operation", path, ti))
				if all {
					any = true
				}
				ports = append(ports, ps...)
			}
			if !any {
				rule.Ports = dedupePorts(ports)
			}
		}
		if len(r.GetWhen()) > 0 {
			w.add(path + ".when")
		}
		np.Spec.Ingress = append(np.Spec.Ingress, rule)
	}
	return np, w.fields
}

// widening collects the fields an L4 policy cannot express.
type widening struct{ fields []string }

func (w *widening) add(field string) { w.fields = append(w.fields, field) }

// sourcePeers maps one source (its fields ANDed) to NetworkPolicy peers
// (ORed). all reports a source that L4 must treat as "anyone".
func sourcePeers(s *securityv1beta1.Source, o Options, w *widening, path string) (peers []Peer, all bool) {
	for _, f := range []struct {
		name string
		vals []string
	}{
		{"notPrincipals", s.GetNotPrincipals()}, {"requestPrincipals", s.GetRequestPrincipals()},
		{"notRequestPrincipals", s.GetNotRequestPrincipals()}, {"notNamespaces", s.GetNotNamespaces()},
		{"notServiceAccounts", s.GetNotServiceAccounts()}, {"remoteIpBlocks", s.GetRemoteIpBlocks()},
		{"notRemoteIpBlocks", s.GetNotRemoteIpBlocks()}, {"trustDomains", s.GetTrustDomains()},
		{"notTrustDomains", s.GetNotTrustDomains()},
	} {
		if len(f.vals) > 0 {
			w.add(path + "." + f.name)
		}
	}
	// Identities: principals, serviceAccounts and namespaces are ANDed;
	// each names namespaces (and, with a service-account label, pods).
	type ident struct{ ns, sa string } // "" ns: any namespace
	var ids []ident
	identities := false
	for _, p := range s.GetPrincipals() {
		identities = true
		ns, sa, ok := parsePrincipal(p)
		if !ok {
			w.add(path + ".principals (" + p + ")")
		}
		ids = append(ids, ident{ns, sa})
	}
	if sas := s.GetServiceAccounts(); len(sas) > 0 {
		var from []ident
		for _, v := range sas {
			ns, sa, _ := strings.Cut(v, "/")
			from = append(from, ident{ns, sa})
		}
		if identities {
			ids = intersect(ids, from, func(a, b ident) (ident, bool) { return meet(a.ns, b.ns, a.sa, b.sa) })
		} else {
			ids = from
		}
		identities = true
	}
	if nss := s.GetNamespaces(); len(nss) > 0 {
		var from []ident
		for _, ns := range nss {
			if strings.Contains(ns, "*") {
				w.add(path + ".namespaces (" + ns + ")")
				ns = ""
			}
			from = append(from, ident{ns: ns})
		}
		if identities {
			ids = intersect(ids, from, func(a, b ident) (ident, bool) { return meet(a.ns, b.ns, a.sa, b.sa) })
		} else {
			ids = from
		}
		identities = true
	}
	if identities {
		if len(s.GetIpBlocks()) > 0 || len(s.GetNotIpBlocks()) > 0 {
			// A peer cannot be both pods and an address range.
			w.add(path + ".ipBlocks")
		}
		if len(ids) == 0 {
			// The ANDed fields cannot all hold: this source matches nobody.
			return nil, false
		}
		for _, id := range ids {
			p := Peer{NamespaceSelector: &LabelSelector{}}
			if id.ns != "" {
				p.NamespaceSelector.MatchLabels = map[string]string{NamespaceLabel: id.ns}
			}
			if id.sa != "" {
				if o.ServiceAccountLabel != "" {
					p.PodSelector = &LabelSelector{MatchLabels: map[string]string{o.ServiceAccountLabel: id.sa}}
				} else {
					w.add(path + ": service account " + id.sa + " (whole namespace allowed; see --service-account-label)")
				}
			}
			peers = append(peers, p)
		}
		return peers, false
	}
	if blocks := s.GetIpBlocks(); len(blocks) > 0 {
		for _, b := range blocks {
			pfx, err := parseCIDR(b)
			if err != nil {
				w.add(path + ".ipBlocks (" + b + ")")
				return nil, true
			}
			blk := &IPBlock{CIDR: pfx.String()}
			for _, nb := range s.GetNotIpBlocks() {
				ex, err := parseCIDR(nb)
				if err == nil && ex.Addr().Is4() == pfx.Addr().Is4() && pfx.Bits() < ex.Bits() && pfx.Contains(ex.Addr()) {
					blk.Except = append(blk.Except, ex.String())
				} else if err != nil || pfx.Overlaps(ex) {
					w.add(path + ".notIpBlocks (" + nb + ")")
				}
			}
			peers = append(peers, Peer{IPBlock: blk})
		}
		return peers, false
	}
	if len(s.GetNotIpBlocks()) > 0 {
		w.add(path + ".notIpBlocks")
	}
	return nil, true
}

// meet is the AND of two identity constraints ("" is "any").
func meet(ns1, ns2, sa1, sa2 string) (struct{ ns, sa string }, bool) {
	ns, ok1 := meetOne(ns1, ns2)
	sa, ok2 := meetOne(sa1, sa2)
	return struct{ ns, sa string }{ns, sa}, ok1 && ok2
}

func meetOne(a, b string) (string, bool) {
	switch {
	case a == "":
		return b, true
	case b == "", a == b:
		return a, true
	}
	return "", false
}

func intersect[T comparable](a, b []T, f func(T, T) (T, bool)) []T {
	var out []T
	for _, x := range a {
		for _, y := range b {
			if z, ok := f(x, y); ok {
				out = append(out, z)
			}
		}
	}
	return out
}

// parsePrincipal reads the namespace and service account of an Istio
// principal, "TD/ns/NS/sa/SA" (or with spiffe://), allowing Istio's
// prefix or suffix "*". ok is false when the principal does not name one
// namespace: it then allows any namespace.
func parsePrincipal(p string) (ns, sa string, ok bool) {
	p = strings.TrimPrefix(p, "spiffe://")
	if p == "*" {
		return "", "", true // any authenticated caller: any pod
	}
	parts := strings.Split(p, "/")
	for i := 0; i+1 < len(parts); i++ {
		if parts[i] != "ns" || strings.Contains(parts[i+1], "*") || parts[i+1] == "" {
			continue
		}
		ns = parts[i+1]
		if i+3 < len(parts) && parts[i+2] == "sa" && !strings.Contains(parts[i+3], "*") && i+4 == len(parts) {
			sa = parts[i+3]
		}
		return ns, sa, true
	}
	return "", "", false
}

func parseCIDR(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// operationPorts maps one operation to ports; all reports "every port".
func operationPorts(op *securityv1beta1.Operation, o Options, w *widening, path string) (ports []Port, all bool) {
	for _, f := range []struct {
		name string
		vals []string
	}{
		{"hosts", op.GetHosts()}, {"notHosts", op.GetNotHosts()}, {"methods", op.GetMethods()},
		{"notMethods", op.GetNotMethods()}, {"paths", op.GetPaths()}, {"notPaths", op.GetNotPaths()},
		{"notPorts", op.GetNotPorts()},
	} {
		if len(f.vals) > 0 {
			w.add(path + "." + f.name)
		}
	}
	if len(op.GetPorts()) == 0 {
		return nil, true
	}
	for _, v := range op.GetPorts() {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 65535 {
			w.add(path + ".ports (" + v + ")")
			return nil, true
		}
		if m, ok := o.Ports[n]; ok {
			n = m
		}
		ports = append(ports, Port{Protocol: "TCP", Port: n})
	}
	return ports, false
}

func dedupePeers(ps []Peer) []Peer {
	seen := map[string]bool{}
	var out []Peer
	for _, p := range ps {
		k, _ := json.Marshal(p)
		if !seen[string(k)] {
			seen[string(k)] = true
			out = append(out, p)
		}
	}
	return out
}

func dedupePorts(ps []Port) []Port {
	seen := map[int]bool{}
	var out []Port
	for _, p := range ps {
		if !seen[p.Port] {
			seen[p.Port] = true
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Port < out[j].Port })
	return out
}

// YAML renders the policies as one multi-document YAML stream.
func YAML(nps []NetworkPolicy) ([]byte, error) {
	var b strings.Builder
	for i, np := range nps {
		if i > 0 {
			b.WriteString("---\n")
		}
		y, err := yaml.Marshal(np)
		if err != nil {
			return nil, fmt.Errorf("netpol: %w", err)
		}
		b.Write(y)
	}
	return []byte(b.String()), nil
}

// NetworkPolicy is networking.k8s.io/v1 NetworkPolicy, the fields used.
type NetworkPolicy struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Metadata   Metadata `json:"metadata"`
	Spec       Spec     `json:"spec"`
}

// Metadata is the object metadata written.
type Metadata struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Spec is a NetworkPolicy spec with ingress rules only.
type Spec struct {
	PodSelector LabelSelector `json:"podSelector"`
	PolicyTypes []string      `json:"policyTypes"`
	Ingress     []IngressRule `json:"ingress"`
}

// LabelSelector selects by labels; empty selects everything.
type LabelSelector struct {
	MatchLabels map[string]string `json:"matchLabels,omitempty"`
}

// IngressRule allows traffic from any of From (everyone when empty) to
// any of Ports (every port when empty).
type IngressRule struct {
	From  []Peer `json:"from,omitempty"`
	Ports []Port `json:"ports,omitempty"`
}

// Peer is pods (in namespaces) or an address range.
type Peer struct {
	PodSelector       *LabelSelector `json:"podSelector,omitempty"`
	NamespaceSelector *LabelSelector `json:"namespaceSelector,omitempty"`
	IPBlock           *IPBlock       `json:"ipBlock,omitempty"`
}

// IPBlock is a CIDR with exceptions inside it.
type IPBlock struct {
	CIDR   string   `json:"cidr"`
	Except []string `json:"except,omitempty"`
}

// Port is a TCP port.
type Port struct {
	Protocol string `json:"protocol"`
	Port     int    `json:"port"`
}
