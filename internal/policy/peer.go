package policy

import (
	"fmt"
	"strconv"

	securityv1beta1 "istio.io/api/security/v1beta1"
)

// compiledPeer is one PeerAuthentication.
type compiledPeer struct {
	ref      string
	ns       string
	selector labelSelector // nil: namespace-wide (mesh-wide in the root namespace)
	mode     MTLSMode      // ModeUnset: inherit
	ports    map[int]MTLSMode
}

func peerMode(m *securityv1beta1.PeerAuthentication_MutualTLS) MTLSMode {
	switch m.GetMode() {
	case securityv1beta1.PeerAuthentication_MutualTLS_STRICT:
		return ModeStrict
	case securityv1beta1.PeerAuthentication_MutualTLS_PERMISSIVE:
		return ModePermissive
	case securityv1beta1.PeerAuthentication_MutualTLS_DISABLE:
		return ModeDisable
	}
	return ModeUnset
}

// compilePeer validates a PeerAuthentication as Istio's
// ValidatePeerAuthentication does.
func compilePeer(d *Document, spec fieldPath, root string) (*compiledPeer, []string, *fieldError) {
	pa := d.Spec.(*securityv1beta1.PeerAuthentication)
	sel, warnings, fe := validateSelector(pa.GetSelector(), spec.key("selector"))
	if fe != nil {
		return nil, nil, fe
	}
	warnings = append(warnings, dryRunRefused(d)...)
	if pa.PortLevelMtls != nil && len(pa.PortLevelMtls) == 0 {
		return nil, nil, errAt(spec.key("portLevelMtls"), "%s", emptyRefused["istio.security.v1beta1.PeerAuthentication.port_level_mtls"])
	}
	if len(sel) == 0 && len(pa.GetPortLevelMtls()) > 0 {
		return nil, nil, errAt(spec.key("portLevelMtls"), "mesh/namespace peer authentication cannot have port level mTLS: add a selector")
	}
	c := &compiledPeer{ref: d.Ref(), ns: d.Namespace, selector: sel, mode: peerMode(pa.GetMtls())}
	if len(pa.GetPortLevelMtls()) > 0 {
		c.ports = make(map[int]MTLSMode, len(pa.GetPortLevelMtls()))
		for port, m := range pa.GetPortLevelMtls() {
			if port == 0 || port > 65535 {
				return nil, nil, errAt(spec.key("portLevelMtls").key(strconv.Itoa(int(port))), "port must be in range 1..65535")
			}
			if m == nil {
				return nil, nil, errAt(spec.key("portLevelMtls").key(strconv.Itoa(int(port))), "mode is required")
			}
			c.ports[int(port)] = peerMode(m)
		}
	}
	if d.Namespace == root && len(sel) > 0 {
		warnings = append(warnings, fmt.Sprintf("PeerAuthentication with a workload selector in the root namespace %q is ignored (as in Istio)", root))
	}
	return c, warnings, nil
}

// peerIndex resolves the mode for a workload port: workload over
// namespace over mesh. When several policies tie at one level, the first
// in document order wins (Istio picks the oldest).
type peerIndex struct {
	mesh *compiledPeer
	ns   map[string]*peerNamespace
}

type peerNamespace struct {
	wide      *compiledPeer
	workloads []*compiledPeer
}

func (x *peerIndex) add(c *compiledPeer, root string) (warning string) {
	if c.ns == root {
		if len(c.selector) > 0 {
			return ""
		}
		if x.mesh != nil {
			return fmt.Sprintf("PeerAuthentication %s is ignored: %s is already the mesh-wide policy (the first one applies)", c.ref, x.mesh.ref)
		}
		x.mesh = c
		return ""
	}
	if x.ns == nil {
		x.ns = map[string]*peerNamespace{}
	}
	n := x.ns[c.ns]
	if n == nil {
		n = &peerNamespace{}
		x.ns[c.ns] = n
	}
	if len(c.selector) == 0 {
		if n.wide != nil {
			return fmt.Sprintf("PeerAuthentication %s is ignored: %s is already the namespace-wide policy of %q (the first one applies)", c.ref, n.wide.ref, c.ns)
		}
		n.wide = c
		return ""
	}
	n.workloads = append(n.workloads, c)
	return ""
}

// MTLSMode is the PeerAuthentication mode in force for dst (dst.Port is
// the workload port): ModeStrict, ModePermissive or ModeDisable, never
// ModeUnset (UNSET everywhere means PERMISSIVE, as in Istio). A nil Set
// answers ModeStrict: with no policy loaded, refuse plaintext.
func (s *Set) MTLSMode(dst Destination) MTLSMode {
	m, _ := s.MTLSPolicy(dst)
	return m
}

// MTLSPolicy is MTLSMode and the "namespace/name" of the PeerAuthentication
// that set it ("" for the built-in PERMISSIVE default).
func (s *Set) MTLSPolicy(dst Destination) (MTLSMode, string) {
	if s == nil {
		return ModeStrict, ""
	}
	mode, ref := ModePermissive, ""
	if m := s.peer.mesh; m != nil && m.mode != ModeUnset {
		mode, ref = m.mode, m.ref
	}
	if dst.Namespace == s.root {
		return mode, ref
	}
	n := s.peer.ns[dst.Namespace]
	if n == nil {
		return mode, ref
	}
	if n.wide != nil && n.wide.mode != ModeUnset {
		mode, ref = n.wide.mode, n.wide.ref
	}
	for _, w := range n.workloads {
		if !w.selector.matches(dst.Labels) {
			continue
		}
		if w.mode != ModeUnset {
			mode, ref = w.mode, w.ref
		}
		if pm, ok := w.ports[dst.Port]; ok && pm != ModeUnset {
			mode, ref = pm, w.ref
		}
		break
	}
	return mode, ref
}
