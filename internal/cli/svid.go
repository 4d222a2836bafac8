package cli

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/moatless/moatless/internal/config"
)

// runSVID talks to a Workload API socket (ours, SPIRE's, any) as a workload.
func runSVID(ctx context.Context, e *Env, args []string) int {
	return e.subcommand(ctx, "svid", []command{
		{"fetch", "fetch this process's X509-SVIDs (--write DIR saves svid.pem, svid_key.pem, svid_bundle.pem)", runSVIDFetch},
		{"jwt", "fetch a JWT-SVID for an audience", runSVIDJWT},
		{"bundle", "print the trust bundle (X.509 PEM, or JWKS with --jwt)", runSVIDBundle},
		{"validate", "validate a JWT-SVID through the Workload API", runSVIDValidate},
	}, args)
}

// svidFlags are the flags every svid subcommand takes.
type svidFlags struct {
	socket  string
	output  string
	timeout time.Duration
}

func (s *svidFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&s.socket, "socket", "", "Workload API socket `path` or unix:// URL (env SPIFFE_ENDPOINT_SOCKET; default "+config.SystemAgentSocket+" if it exists, else $XDG_RUNTIME_DIR/moatless/agent.sock)")
	fs.StringVar(&s.output, "o", "text", "output format: text or json")
	fs.DurationVar(&s.timeout, "timeout", 10*time.Second, "give up after this long")
}

// addr resolves the socket the way go-spiffe does, with our default.
func (s *svidFlags) addr(e *Env) string {
	a := firstNonEmpty(s.socket, e.getenv("SPIFFE_ENDPOINT_SOCKET"))
	if a == "" {
		a = config.AgentSocketForClients(e.getenv, os.Geteuid())
	}
	if !strings.Contains(a, "://") {
		a = "unix://" + a
	}
	return a
}

// parse parses args into fs, on which register put the svid flags, and
// checks -o; see Env.parseFlags.
func (s *svidFlags) parse(e *Env, fs *flag.FlagSet, args []string) (int, bool) {
	if code, ok := e.parseFlags(fs, args); !ok {
		return code, false
	}
	if s.output != "text" && s.output != "json" {
		return e.errorf(ExitUsage, "-o must be text or json, not %q", s.output), false
	}
	return 0, true
}

// workloadFail maps a Workload API error to an exit code with a hint.
func (e *Env) workloadFail(addr string, err error) int {
	switch status.Code(err) {
	case codes.PermissionDenied:
		if strings.Contains(status.Convert(err).Message(), "identity revoked") {
			return e.errorf(ExitDenied, "%v (see \"moatless revoke list\"; \"moatless revoke lift\" restores it)", err)
		}
		return e.errorf(ExitDenied, "%v (no registration entry matches this process: check \"moatless entry list\" and the selectors of this user and binary)", err)
	case codes.InvalidArgument:
		return e.errorf(ExitUsage, "%v", err)
	case codes.Unavailable:
		return e.errorf(ExitFailure, "%v (is \"moatless agent\" running on %s? set --socket or SPIFFE_ENDPOINT_SOCKET)", err, addr)
	}
	return e.errorf(ExitFailure, "%v", err)
}

type svidJSON struct {
	SPIFFEID  string    `json:"spiffe_id"`
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"not_before"`
	ExpiresAt time.Time `json:"expires_at"`
	CertChain string    `json:"cert_chain_pem"`
	Hint      string    `json:"hint,omitempty"`
}

func pemCerts(certs []*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return b
}

func runSVIDFetch(ctx context.Context, e *Env, args []string) int {
	fs := flag.NewFlagSet("svid fetch", flag.ContinueOnError)
	var sf svidFlags
	sf.register(fs)
	write := fs.String("write", "", "write svid.pem, svid_key.pem (0600) and svid_bundle.pem of the first SVID into this `directory`")
	if code, ok := sf.parse(e, fs, args); !ok {
		return code
	}
	ctx, cancel := context.WithTimeout(ctx, sf.timeout)
	defer cancel()
	addr := sf.addr(e)
	x, err := workloadapi.FetchX509Context(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		return e.workloadFail(addr, err)
	}
	if *write != "" {
		s := x.DefaultSVID()
		certs, key, err := s.Marshal()
		if err != nil {
			return e.errorf(ExitFailure, "encode SVID: %v", err)
		}
		b, err := x.Bundles.GetX509BundleForTrustDomain(s.ID.TrustDomain())
		if err != nil {
			return e.errorf(ExitFailure, "%v", err)
		}
		if err := os.MkdirAll(*write, 0o755); err != nil {
			return e.errorf(ExitFailure, "%v", err)
		}
		for _, f := range []struct {
			name string
			data []byte
			mode os.FileMode
		}{
			{"svid.pem", certs, 0o644},
			{"svid_key.pem", key, 0o600},
			{"svid_bundle.pem", pemCerts(b.X509Authorities()), 0o644},
		} {
			if err := writeAtomic(filepath.Join(*write, f.name), f.data, f.mode); err != nil {
				return e.errorf(ExitFailure, "write %s: %v", f.name, err)
			}
		}
	}
	if sf.output == "json" {
		out := make([]svidJSON, 0, len(x.SVIDs))
		for _, s := range x.SVIDs {
			leaf := s.Certificates[0]
			out = append(out, svidJSON{SPIFFEID: s.ID.String(), Serial: strings.ToLower(leaf.SerialNumber.Text(16)),
				NotBefore: leaf.NotBefore.UTC(), ExpiresAt: leaf.NotAfter.UTC(), CertChain: string(pemCerts(s.Certificates)), Hint: s.Hint})
		}
		return e.printList(out, 0)
	}
	for i, s := range x.SVIDs {
		if i > 0 {
			fmt.Fprintln(e.Stdout)
		}
		leaf := s.Certificates[0]
		fmt.Fprintf(e.Stdout, "SPIFFE ID:  %s\n", s.ID)
		fmt.Fprintf(e.Stdout, "Serial:     %s\n", strings.ToLower(leaf.SerialNumber.Text(16)))
		fmt.Fprintf(e.Stdout, "Valid:      %s to %s (expires in %s)\n", leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), time.Until(leaf.NotAfter).Round(time.Second))
		if s.Hint != "" {
			fmt.Fprintf(e.Stdout, "Hint:       %s\n", s.Hint)
		}
	}
	if *write != "" {
		fmt.Fprintf(e.Stdout, "\nWrote %s, %s and %s\n", filepath.Join(*write, "svid.pem"), filepath.Join(*write, "svid_key.pem"), filepath.Join(*write, "svid_bundle.pem"))
	}
	return ExitOK
}

// writeAtomic writes data to path through a temporary file and a rename,
// so readers never see half a key.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

func runSVIDJWT(ctx context.Context, e *Env, args []string) int {
	fs := flag.NewFlagSet("svid jwt", flag.ContinueOnError)
	var sf svidFlags
	sf.register(fs)
	var aud stringList
	fs.Var(&aud, "audience", "audience the token is for (repeatable; at least one)")
	id := fs.String("spiffe-id", "", "which of this process's SPIFFE IDs (default: all of them)")
	if code, ok := sf.parse(e, fs, args); !ok {
		return code
	}
	if len(aud) == 0 {
		return e.errorf(ExitUsage, "svid jwt: --audience is required")
	}
	params := jwtsvid.Params{Audience: aud[0], ExtraAudiences: aud[1:]}
	if *id != "" {
		sid, err := spiffeid.FromString(*id)
		if err != nil {
			return e.errorf(ExitUsage, "svid jwt: --spiffe-id: %v", err)
		}
		params.Subject = sid
	}
	ctx, cancel := context.WithTimeout(ctx, sf.timeout)
	defer cancel()
	addr := sf.addr(e)
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		return e.workloadFail(addr, err)
	}
	defer c.Close()
	svids, err := c.FetchJWTSVIDs(ctx, params)
	if err != nil {
		return e.workloadFail(addr, err)
	}
	if sf.output == "json" {
		type out struct {
			SPIFFEID  string    `json:"spiffe_id"`
			Token     string    `json:"token"`
			Audience  []string  `json:"audience"`
			ExpiresAt time.Time `json:"expires_at"`
		}
		var o []out
		for _, s := range svids {
			o = append(o, out{s.ID.String(), s.Marshal(), s.Audience, s.Expiry.UTC()})
		}
		return e.printList(o, 0)
	}
	for _, s := range svids {
		fmt.Fprintln(e.Stdout, s.Marshal())
	}
	return ExitOK
}

func runSVIDBundle(ctx context.Context, e *Env, args []string) int {
	fs := flag.NewFlagSet("svid bundle", flag.ContinueOnError)
	var sf svidFlags
	sf.register(fs)
	jwt := fs.Bool("jwt", false, "print the JWT bundle (JWKS) instead of the X.509 one")
	if code, ok := sf.parse(e, fs, args); !ok {
		return code
	}
	ctx, cancel := context.WithTimeout(ctx, sf.timeout)
	defer cancel()
	addr := sf.addr(e)
	if *jwt {
		set, err := workloadapi.FetchJWTBundles(ctx, workloadapi.WithAddr(addr))
		if err != nil {
			return e.workloadFail(addr, err)
		}
		out := map[string]json.RawMessage{}
		for _, b := range set.Bundles() {
			raw, err := b.Marshal()
			if err != nil {
				return e.errorf(ExitFailure, "%v", err)
			}
			out[b.TrustDomain().Name()] = raw
		}
		if sf.output == "json" || len(out) != 1 {
			return e.printJSON(out)
		}
		for _, raw := range out {
			e.Stdout.Write(append(raw, '\n'))
		}
		return ExitOK
	}
	set, err := workloadapi.FetchX509Bundles(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		return e.workloadFail(addr, err)
	}
	bundles := set.Bundles()
	sort.Slice(bundles, func(i, j int) bool { return bundles[i].TrustDomain().Name() < bundles[j].TrustDomain().Name() })
	if sf.output == "json" {
		out := map[string]string{}
		for _, b := range bundles {
			out[b.TrustDomain().Name()] = string(pemCerts(b.X509Authorities()))
		}
		return e.printJSON(out)
	}
	for _, b := range bundles {
		e.Stdout.Write(pemCerts(b.X509Authorities()))
	}
	return ExitOK
}

func runSVIDValidate(ctx context.Context, e *Env, args []string) int {
	fs := flag.NewFlagSet("svid validate", flag.ContinueOnError)
	var sf svidFlags
	sf.register(fs)
	aud := fs.String("audience", "", "the audience the token must carry (required)")
	token := fs.String("token", "", "the JWT-SVID (default: read from stdin)")
	if code, ok := sf.parse(e, fs, args); !ok {
		return code
	}
	if *aud == "" {
		return e.errorf(ExitUsage, "svid validate: --audience is required")
	}
	tok := *token
	if tok == "" {
		b, err := io.ReadAll(io.LimitReader(e.Stdin, 64<<10+1))
		if err != nil {
			return e.errorf(ExitFailure, "read token: %v", err)
		}
		if len(b) > 64<<10 {
			return e.errorf(ExitUsage, "svid validate: token larger than 64 KiB")
		}
		tok = strings.TrimSpace(string(b))
	}
	if tok == "" {
		return e.errorf(ExitUsage, "svid validate: no token: pass --token or pipe it on stdin")
	}
	ctx, cancel := context.WithTimeout(ctx, sf.timeout)
	defer cancel()
	addr := sf.addr(e)
	c, err := workloadapi.New(ctx, workloadapi.WithAddr(addr))
	if err != nil {
		return e.workloadFail(addr, err)
	}
	defer c.Close()
	s, err := c.ValidateJWTSVID(ctx, tok, *aud)
	if err != nil {
		if status.Code(err) == codes.InvalidArgument {
			return e.errorf(ExitDenied, "token is not valid: %v", status.Convert(err).Message())
		}
		return e.workloadFail(addr, err)
	}
	if sf.output == "json" {
		return e.printJSON(map[string]any{"spiffe_id": s.ID.String(), "claims": s.Claims})
	}
	fmt.Fprintf(e.Stdout, "valid: %s (audience %s, expires %s)\n", s.ID, strings.Join(s.Audience, ", "), s.Expiry.UTC().Format(time.RFC3339))
	return ExitOK
}
