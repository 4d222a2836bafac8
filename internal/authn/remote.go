package authn

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Backoff after failed fetches: 1 s doubling to at most maxBackoff (and
// never past the regular refresh interval).
const (
	minBackoff = time.Second
	maxBackoff = 5 * time.Minute
)

// remoteKeys is one key set fetched over the network: from a jwksUri, or
// from the jwks_uri an issuer's OpenID Connect discovery document names.
// Rules that share the source share it.
type remoteKeys struct {
	v       *Verifier
	id      string // jwksURI, or "discovery:" + issuer
	jwksURI string // "" for discovery
	issuer  string // for discovery
	timeout time.Duration

	keys atomic.Pointer[keySet]

	mu          sync.Mutex
	inflight    chan struct{} // non-nil while a fetch runs; closed when it ends
	nextFetch   time.Time     // zero: due now
	failures    int           // consecutive
	lastKick    time.Time     // last refresh requested by an unknown kid
	lastErr     error
	lastSuccess time.Time
	lastAttempt time.Time
	fetches     uint64
	fetchFails  uint64
}

func (r *remoteKeys) current() *keySet { return r.keys.Load() }

// describe names the source for logs and Stats, without query strings.
func (r *remoteKeys) describe() string {
	if r.jwksURI != "" {
		return redactURL(r.jwksURI)
	}
	return "discovery " + redactURL(r.issuer)
}

// fetch fetches the key set once, or waits for the fetch already running
// and reports its outcome. On success the new set replaces the old one
// (unless it is byte-for-byte the same document, which keeps the old
// pointer and with it the verified-token cache). On failure the old set
// stays: one failed fetch never leaves an issuer without keys.
func (r *remoteKeys) fetch(ctx context.Context) error {
	r.mu.Lock()
	if ch := r.inflight; ch != nil {
		r.mu.Unlock()
		select {
		case <-ch:
			r.mu.Lock()
			defer r.mu.Unlock()
			return r.lastErr
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	ch := make(chan struct{})
	r.inflight = ch
	r.mu.Unlock()

	err := r.doFetch(ctx)

	now := r.v.now()
	r.mu.Lock()
	r.fetches++
	r.lastAttempt = now
	if err != nil {
		r.fetchFails++
		r.failures++
		backoff := min(minBackoff<<min(r.failures-1, 16), maxBackoff, r.v.refresh)
		r.nextFetch = now.Add(backoff)
		r.lastErr = err
	} else {
		r.failures = 0
		r.lastSuccess = now
		r.nextFetch = now.Add(r.v.refresh)
		r.lastErr = nil
	}
	r.inflight = nil
	close(ch)
	r.mu.Unlock()

	if err != nil {
		r.v.log.Warn("authn: fetching JWKS failed; keeping the last good key set",
			"source", r.describe(), "error", err, "have_keys", r.current() != nil)
	}
	if hook := r.v.opts.OnJWKSFetch; hook != nil {
		hook(r.describe(), err)
	}
	return err
}

func (r *remoteKeys) doFetch(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	uri := r.jwksURI
	if uri == "" {
		var err error
		if uri, err = r.discover(ctx); err != nil {
			return err
		}
	}
	body, err := r.v.get(ctx, uri)
	if err != nil {
		return fmt.Errorf("authn: %w: %s: %w", ErrJWKSFetch, redactURL(uri), err)
	}
	ks, skipped, err := parseJWKS(body)
	for _, sk := range skipped {
		r.v.log.Warn("authn: JWKS key skipped", "source", r.describe(), "kid", sk.kid, "kty", sk.kty, "reason", sk.reason)
	}
	if err != nil {
		return fmt.Errorf("authn: %w: %s: %w", ErrJWKSFetch, redactURL(uri), err)
	}
	old := r.current()
	if old != nil && old.digest == ks.digest {
		return nil
	}
	r.keys.Store(ks)
	r.v.log.Info("authn: JWKS loaded", "source", r.describe(), "keys", len(ks.keys), "kids", ks.kids())
	return nil
}

// discover reads the issuer's OpenID Connect discovery document and
// returns its jwks_uri. The document's issuer must equal the configured
// issuer exactly (OpenID Connect Discovery 1.0 section 4.3), so one
// provider cannot hand out keys for another's tokens.
func (r *remoteKeys) discover(ctx context.Context) (string, error) {
	u := strings.TrimSuffix(r.issuer, "/") + "/.well-known/openid-configuration"
	body, err := r.v.get(ctx, u)
	if err != nil {
		return "", fmt.Errorf("authn: %w: discovery %s: %w", ErrJWKSFetch, redactURL(u), err)
	}
	if err := checkStrictJSON(body); err != nil {
		return "", fmt.Errorf("authn: %w: discovery %s: %w", ErrJWKSFetch, redactURL(u), err)
	}
	var doc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return "", fmt.Errorf("authn: %w: discovery %s: %w", ErrJWKSFetch, redactURL(u), err)
	}
	if doc.Issuer != r.issuer {
		return "", fmt.Errorf("authn: %w: discovery %s: document is for issuer %s, not %s",
			ErrJWKSFetch, redactURL(u), quote(doc.Issuer), quote(r.issuer))
	}
	if err := checkFetchURL(doc.JWKSURI); err != nil {
		return "", fmt.Errorf("authn: %w: discovery %s: jwks_uri: %w", ErrJWKSFetch, redactURL(u), err)
	}
	return doc.JWKSURI, nil
}

// get fetches uri with the verifier's client and returns at most
// maxJWKSSize bytes of a 200 response. A larger body is an error, not a
// truncated document. Errors never repeat the URL's query string.
func (v *Verifier) get(ctx context.Context, uri string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return nil, errors.New("cannot build request")
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := v.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		return nil, fmt.Errorf("HTTP status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, v.maxJWKS+1))
	if err != nil {
		return nil, fmt.Errorf("reading body: %w", err)
	}
	if int64(len(body)) > v.maxJWKS {
		return nil, fmt.Errorf("body larger than %d bytes", v.maxJWKS)
	}
	return body, nil
}

// checkRedirect follows at most 3 redirects, each to a URL keys may be
// fetched from: a redirect cannot downgrade https to http.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 3 {
		return errors.New("too many redirects")
	}
	if err := checkFetchURL(req.URL.String()); err != nil {
		return fmt.Errorf("redirect refused: %w", err)
	}
	return nil
}

// requestRefresh asks the refresher for a fetch outside the schedule.
// unknownKID refreshes are rate limited to one per MinRefreshInterval per
// source, and never cut short the backoff of a source whose last fetch
// failed, so tokens with made-up kids cannot turn the sidecar into a
// load generator against the issuer. A source without keys is fetched on
// its own backoff schedule; the request only wakes the refresher.
func (r *remoteKeys) requestRefresh(unknownKID bool) {
	if unknownKID {
		now := r.v.now()
		r.mu.Lock()
		if r.inflight != nil || (!r.lastKick.IsZero() && now.Sub(r.lastKick) < r.v.minRefresh) {
			r.mu.Unlock()
			return
		}
		r.lastKick = now
		// A failing source keeps its backoff: the refresher retries it
		// anyway, and made-up kids must not make a struggling issuer's
		// retries more frequent than the backoff allows.
		if r.failures == 0 && r.nextFetch.After(now) {
			r.nextFetch = now
		}
		r.mu.Unlock()
	}
	r.v.wake()
}

// due reports whether the source should be fetched now, and when it
// will next be due otherwise.
func (r *remoteKeys) due(now time.Time) (bool, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.inflight != nil {
		return false, time.Time{}
	}
	return !now.Before(r.nextFetch), r.nextFetch
}

func (r *remoteKeys) status() KeySetStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := KeySetStatus{
		Source:      r.describe(),
		LastSuccess: r.lastSuccess,
		LastAttempt: r.lastAttempt,
		NextFetch:   r.nextFetch,
		Fetches:     r.fetches,
		Failures:    r.fetchFails,
	}
	if r.lastErr != nil {
		st.LastError = r.lastErr.Error()
	}
	if ks := r.current(); ks != nil {
		st.Keys = len(ks.keys)
	}
	return st
}

// run is the refresher: it fetches every source when due (on start, every
// Options.JWKSRefresh after a success, with backoff after a failure) and
// whenever Verify asks (wake). Fetches run concurrently, each bounded by
// its timeout.
func (v *Verifier) run(ctx context.Context) {
	defer close(v.done)
	timer := time.NewTimer(0)
	defer timer.Stop()
	var fetches sync.WaitGroup
	defer fetches.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-v.kick:
		case <-timer.C:
		}
		now := v.now()
		next := now.Add(v.refresh)
		for _, r := range v.remoteList() {
			isDue, at := r.due(now)
			if isDue {
				fetches.Add(1)
				go func() {
					defer fetches.Done()
					_ = r.fetch(ctx)
					v.wake() // recompute the schedule with the new nextFetch
				}()
				continue
			}
			if !at.IsZero() && at.Before(next) {
				next = at
			}
		}
		timer.Reset(max(next.Sub(now), 10*time.Millisecond))
	}
}

// wake nudges the refresher without blocking.
func (v *Verifier) wake() {
	select {
	case v.kick <- struct{}{}:
	default:
	}
}

func (v *Verifier) remoteList() []*remoteKeys {
	v.remotesMu.Lock()
	defer v.remotesMu.Unlock()
	out := make([]*remoteKeys, 0, len(v.remotes))
	for _, r := range v.remotes {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b *remoteKeys) int { return strings.Compare(a.id, b.id) })
	return out
}
