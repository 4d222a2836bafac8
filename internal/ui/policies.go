package ui

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/moatless/moatless/internal/store"
)

type policiesData struct {
	Current  uint64
	Versions []store.PolicyVersion
	Next     uint64
}

func (u *UI) policies(q *request) { u.showPolicies(q, "", "") }

func (u *UI) showPolicies(q *request, flash, flashErr string) {
	before, ok := u.beforeParam(q, "Policies")
	if !ok {
		return
	}
	const limit = 50
	vs, err := u.cfg.Policies.PolicyHistory(q.ctx, before, limit)
	if err != nil {
		u.fail(q, "Policies", err)
		return
	}
	d := policiesData{Versions: vs}
	if before == 0 && len(vs) > 0 {
		d.Current = vs[0].Version
	} else if cur, err := u.cfg.Policies.PolicyHistory(q.ctx, 0, 1); err == nil && len(cur) > 0 {
		d.Current = cur[0].Version
	}
	if len(vs) == limit && vs[len(vs)-1].Version > 1 {
		d.Next = vs[len(vs)-1].Version
	}
	u.show(q, http.StatusOK, "policies", &page{Title: "Policies", Nav: "policies", Path: Prefix + "/policies", Flash: flash, FlashErr: flashErr, Data: d})
}

// objectDiff is one object's change between two versions.
type objectDiff struct {
	Ref   store.PolicyRef
	Op    string // create, update, delete
	Lines []diffLine
}

type policyData struct {
	Version, Previous uint64
	Info              *store.PolicyVersion
	Diffs             []objectDiff
	Objects           []PolicyObject
	Current           uint64
}

// policyVersion shows one version: what changed from the version before
// it, line by line, and the whole set as it stood.
func (u *UI) policyVersion(q *request) {
	v, err := strconv.ParseUint(q.r.PathValue("version"), 10, 63)
	if err != nil || v == 0 {
		u.show(q, http.StatusNotFound, "error", &page{Title: "Policies", FlashErr: "There is no such policy version."})
		return
	}
	ver, objs, err := u.cfg.Policies.PolicyObjects(q.ctx, v)
	if err != nil {
		u.fail(q, "Policies", err)
		return
	}
	d := policyData{Version: ver, Objects: objs}
	if hist, err := u.cfg.Policies.PolicyHistory(q.ctx, v+1, 1); err == nil && len(hist) == 1 && hist[0].Version == v {
		d.Info = &hist[0]
	}
	if cur, err := u.cfg.Policies.PolicyHistory(q.ctx, 0, 1); err == nil && len(cur) > 0 {
		d.Current = cur[0].Version
	}
	var prev []PolicyObject
	if v > 1 {
		if d.Previous, prev, err = u.cfg.Policies.PolicyObjects(q.ctx, v-1); err != nil {
			u.fail(q, "Policies", err)
			return
		}
	}
	d.Diffs = diffSets(prev, objs)
	u.show(q, http.StatusOK, "policy", &page{Title: "Policy version " + strconv.FormatUint(ver, 10), Nav: "policies", Data: d})
}

// diffSets compares two policy sets object by object, in the order of
// their references.
func diffSets(old, cur []PolicyObject) []objectDiff {
	before := map[store.PolicyRef]string{}
	for _, o := range old {
		before[o.PolicyRef] = o.Text
	}
	after := map[store.PolicyRef]string{}
	for _, o := range cur {
		after[o.PolicyRef] = o.Text
	}
	var refs []store.PolicyRef
	for _, o := range old {
		refs = append(refs, o.PolicyRef)
	}
	for _, o := range cur {
		if _, ok := before[o.PolicyRef]; !ok {
			refs = append(refs, o.PolicyRef)
		}
	}
	sortRefs(refs)
	var out []objectDiff
	for _, r := range refs {
		a, inOld := before[r]
		b, inNew := after[r]
		switch {
		case inOld && inNew && a == b:
			continue
		case !inOld:
			out = append(out, objectDiff{Ref: r, Op: "create", Lines: diffLines("", b)})
		case !inNew:
			out = append(out, objectDiff{Ref: r, Op: "delete", Lines: diffLines(a, "")})
		default:
			out = append(out, objectDiff{Ref: r, Op: "update", Lines: diffLines(a, b)})
		}
	}
	return out
}

// rollback makes an earlier version's set current again.
func (u *UI) rollback(q *request) {
	v, err := strconv.ParseUint(strings.TrimSpace(q.r.PostFormValue("version")), 10, 63)
	if err != nil || v == 0 {
		u.showPolicies(q, "", "Roll back: give a policy version number.")
		return
	}
	nv, n, err := u.cfg.Policies.RollbackPolicy(q.ctx, q.actor(), v)
	if err != nil {
		u.showPolicies(q, "", u.actionFailed(q, "Roll back", err))
		return
	}
	if n == 0 {
		u.showPolicies(q, "The set of version "+strconv.FormatUint(v, 10)+" is the one in force (version "+strconv.FormatUint(nv, 10)+"); nothing changed.", "")
		return
	}
	u.showPolicies(q, "Rolled back to the set of version "+strconv.FormatUint(v, 10)+" as version "+strconv.FormatUint(nv, 10)+
		"; the sidecars are applying it (see Nodes for convergence).", "")
}
