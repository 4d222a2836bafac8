package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/moatless/moatless/internal/policy"
	"github.com/moatless/moatless/internal/telemetry"
	"github.com/moatless/moatless/internal/wire"
)

// maxPolicyFile bounds one policy file, maxRevocationsFile the revocation
// list.
const (
	maxPolicyFile      = 4 << 20
	maxRevocationsFile = 16 << 20
)

// FileWatcher keeps a standalone sidecar's files in force: the identity
// (cert, key, bundle), the policy files and the revocation list. Each is
// re-read every Interval; a change is applied atomically, and a reload that
// fails (unreadable file, invalid policy, bad JSON) keeps what is in force,
// logs the error and counts it in moatless_sidecar_reload_failures_total.
// Policy and revocation changes apply once two consecutive checks read the
// same content (one Interval after the write settles), so a half-written
// file is never in force. Identity files need no such wait: a half-written
// certificate or key fails to parse or to match and is refused.
type FileWatcher struct {
	// Sidecar is what the files are put in force in: a *Sidecar, or
	// any other PolicyTarget (the gateway).
	Sidecar PolicyTarget
	// Identity, when set, is reloaded.
	Identity *FileSource
	// PolicyFiles are files or directories (not recursive) of Istio
	// security documents and RegoProviders (*.yaml, *.yml, *.json), Rego
	// modules (*.rego) and data (data.json, data.yaml): see
	// policy.PolicyFileKind.
	PolicyFiles []string
	// PolicyOptions are passed to policy.Compile.
	PolicyOptions policy.Options
	// RevocationsFile is a JSON wire.Revocations document; "" for none.
	RevocationsFile string
	// Interval between checks; default 2s.
	Interval time.Duration
	Logger   *slog.Logger

	policySum [32]byte
	policyVer uint64
	revRaw    []byte
	revLoaded bool

	// A change is applied only once two consecutive checks read the same
	// content, so a file caught half-written by an editor or a copy (empty,
	// or cut at a document boundary, which still parses) is never put in
	// force: that could drop a DENY policy or lift every revocation.
	pendingPolicy [32]byte
	pendingRev    [32]byte
	settled       bool // Load: apply at once

	// failures decides, per kind of reload, which failures are logged: a
	// file that stays broken once per change of the error, not on every
	// check (the metric still counts every failed check).
	failures telemetry.FailureLog
}

// Load reads everything once. Unlike later reloads, an error here is
// returned: a sidecar must not start on policies it cannot read.
func (w *FileWatcher) Load(ctx context.Context) error {
	if w.Logger == nil {
		w.Logger = slog.Default()
	}
	w.settled = true
	defer func() { w.settled = false }()
	if len(w.PolicyFiles) > 0 {
		if _, err := w.reloadPolicy(ctx); err != nil {
			return err
		}
	}
	if w.RevocationsFile != "" {
		if _, err := w.reloadRevocations(); err != nil {
			return err
		}
	}
	return nil
}

// Check runs one round of reloads and returns the errors of those that
// failed (the previous state stays in force for each).
func (w *FileWatcher) Check(ctx context.Context) error {
	var errs []error
	if w.Identity != nil {
		changed, err := w.Identity.Reload()
		w.noteFailure("identity", err)
		if err != nil {
			errs = append(errs, err)
		} else if changed {
			if svid, err := w.Identity.GetX509SVID(); err == nil {
				w.Logger.Info("identity reloaded", "spiffe_id", svid.ID.String(), "serial", serialHex(svid.Certificates[0]), "expires", svid.Certificates[0].NotAfter)
			}
		}
	}
	if len(w.PolicyFiles) > 0 {
		_, err := w.reloadPolicy(ctx)
		w.noteFailure("policy", err)
		errs = append(errs, err)
	}
	if w.RevocationsFile != "" {
		_, err := w.reloadRevocations()
		w.noteFailure("revocations", err)
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// noteFailure counts a failed reload of what and logs it unless the same
// error was the last one logged for what; a success forgets the error, so
// the next failure is logged again. No recovery line: a nil error is also
// a changed file waiting for its second read, not yet known to be good.
func (w *FileWatcher) noteFailure(what string, err error) {
	if err == nil {
		w.failures.Worked(what)
		return
	}
	w.Sidecar.ReloadFailed(what)
	if w.failures.Failed(what, err) {
		w.Logger.Error("reload failed; keeping what is in force", "reload", what, "err", err)
	}
}

// Run checks every Interval until ctx ends.
func (w *FileWatcher) Run(ctx context.Context) {
	iv := w.Interval
	if iv <= 0 {
		iv = 2 * time.Second
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.Check(ctx)
		}
	}
}

// policyPaths expands directories into their policy files, sorted.
func policyPaths(entries []string) ([]string, error) {
	var out []string
	for _, p := range entries {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("proxy: policy files: %w", err)
		}
		if !st.IsDir() {
			out = append(out, p)
			continue
		}
		des, err := os.ReadDir(p)
		if err != nil {
			return nil, fmt.Errorf("proxy: policy files: %w", err)
		}
		for _, de := range des {
			if _, ok := policy.PolicyFileKind(de.Name()); ok && de.Type().IsRegular() && !strings.HasPrefix(de.Name(), ".") {
				out = append(out, filepath.Join(p, de.Name()))
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// reloadPolicy compiles the policy files when their content changed.
func (w *FileWatcher) reloadPolicy(ctx context.Context) (bool, error) {
	paths, err := policyPaths(w.PolicyFiles)
	if err != nil {
		return false, err
	}
	h := sha256.New()
	contents := make([][]byte, len(paths))
	for i, p := range paths {
		b, err := readLimited(p, maxPolicyFile)
		if err != nil {
			return false, fmt.Errorf("proxy: policy file: %w", err)
		}
		contents[i] = b
		fmt.Fprintf(h, "%s\x00%d\x00", p, len(b))
		h.Write(b)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	if w.policyVer > 0 && sum == w.policySum {
		return false, nil
	}
	if !w.settled && sum != w.pendingPolicy {
		w.pendingPolicy = sum // changed since the last check: wait for it to settle
		return false, nil
	}
	var b policy.Bundle
	for i, p := range paths {
		if err := b.Add(p, contents[i]); err != nil {
			return false, fmt.Errorf("proxy: %w", err)
		}
	}
	docs := b.Docs
	set, err := b.Compile(w.PolicyOptions)
	if err != nil {
		return false, fmt.Errorf("proxy: compile policies: %w", err)
	}
	for _, warn := range set.Warnings() {
		w.Logger.Warn("policy warning", "warning", warn)
	}
	w.policySum = sum
	w.policyVer++
	w.Sidecar.SetAuthorizerContext(ctx, w.policyVer, set)
	w.Logger.Info("policies loaded", "version", w.policyVer, "files", len(paths), "documents", len(docs), "rego_modules", len(b.Modules), "data_documents", len(b.Data))
	return true, nil
}

// reloadRevocations applies the revocation file when it changed. A missing
// file is an empty list only if it never existed; once loaded, a vanished
// file is an error (keep the revocations rather than silently lift them).
func (w *FileWatcher) reloadRevocations() (bool, error) {
	b, err := readLimited(w.RevocationsFile, maxRevocationsFile)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && !w.revLoaded {
			return false, nil
		}
		return false, fmt.Errorf("proxy: revocations file: %w", err)
	}
	if w.revLoaded && bytes.Equal(b, w.revRaw) {
		return false, nil
	}
	if sum := sha256.Sum256(b); !w.settled && sum != w.pendingRev {
		w.pendingRev = sum
		return false, nil
	}
	r, err := ParseRevocations(b)
	if err != nil {
		return false, fmt.Errorf("proxy: revocations file %s: %w", w.RevocationsFile, err)
	}
	w.revRaw, w.revLoaded = b, true
	n := w.Sidecar.SetRevocations(r)
	w.Logger.Info("revocations loaded", "spiffe_ids", len(r.SPIFFEIDs), "serials", len(r.Serials), "token_ids", len(r.TokenIDs), "closed", n)
	return true, nil
}

// ParseRevocations reads a JSON wire.Revocations document strictly: unknown
// fields, trailing data, empty or malformed SPIFFE IDs and serials that are
// not hex are errors. An empty (or all-whitespace) input is an empty list.
func ParseRevocations(b []byte) (*wire.Revocations, error) {
	var r wire.Revocations
	if len(bytes.TrimSpace(b)) == 0 {
		return &r, nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, errors.New("trailing data after the JSON object")
	}
	for _, id := range r.SPIFFEIDs {
		if _, err := spiffeid.FromString(id); err != nil {
			return nil, fmt.Errorf("spiffe_ids: %q: %w", id, err)
		}
	}
	for _, s := range r.Serials {
		if !isHex(strings.TrimSpace(s.Serial)) {
			return nil, fmt.Errorf("serials: %q is not a hex serial", s.Serial)
		}
	}
	for _, t := range r.TokenIDs {
		if t.JTI == "" {
			return nil, errors.New("token_ids: empty jti")
		}
	}
	return &r, nil
}

func isHex(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}
