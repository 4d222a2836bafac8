package cli

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/token"
)

// runOAuth is "moatless oauth client|user|token|keys ...".
func runOAuth(ctx context.Context, e *Env, args []string) int {
	return e.subcommand(ctx, "oauth", []command{
		{"client", "create, list, show, rotate-secret and delete OAuth clients", runOAuthClient},
		{"user", "create, list, show and delete users; passwords and MFA", runOAuthUser},
		{"token", "revoke and introspect tokens; list revoked token IDs", runOAuthToken},
		{"keys", "list the token signing keys (public data); rotate them now; revoke a leaked one", runOAuthKeys},
	}, args)
}

func runOAuthClient(ctx context.Context, e *Env, args []string) int {
	return e.subcommand(ctx, "oauth client", []command{
		{"create", "register a client; prints its secret once", runOAuthClientCreate},
		{"list", "list clients", runOAuthClientList},
		{"show", "show one client by client_id", runOAuthClientShow},
		{"rotate-secret", "give a client a new secret (the old one stops working)", runOAuthClientRotate},
		{"delete", "delete a client", runOAuthClientDelete},
	}, args)
}

// grantAliases lets the CLI say token-exchange for the RFC 8693 URN.
var grantAliases = map[string]string{
	"token-exchange": token.GrantTokenExchange, "token_exchange": token.GrantTokenExchange, "exchange": token.GrantTokenExchange,
	"code": token.GrantAuthorizationCode, "refresh": token.GrantRefreshToken,
}

// splitWords turns repeated flags, each possibly space-separated, into a
// list ("--scope 'a b' --scope c" is a, b, c).
func splitWords(vs []string) []string {
	var out []string
	for _, v := range vs {
		out = append(out, strings.Fields(v)...)
	}
	return out
}

func runOAuthClientCreate(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("oauth client create")
	fs := cmd.fs
	name := fs.String("name", "", "client `name` (required; also the client_id unless --id is given)")
	id := fs.String("id", "", "client_id (default: the name)")
	var grants, scopes, auds, redirects, xauds, roles, perms stringList
	fs.Var(&grants, "grant", "grant `type` the client may use: client_credentials, authorization_code, refresh_token, token-exchange (repeatable)")
	fs.Var(&scopes, "scope", "`scopes` the client may ask for, space-separated (repeatable)")
	fs.Var(&auds, "audience", "`audience` its access tokens may be for (repeatable; default: the client_id)")
	fs.Var(&redirects, "redirect-uri", "redirect `URI` for authorization_code, matched exactly (repeatable)")
	var corsOrigins stringList
	fs.Var(&corsOrigins, "cors-origin", "browser `origin` (https://app.example.com) allowed to call the token endpoint: single-page apps (repeatable)")
	fs.Var(&xauds, "exchange-audience", "`audience` it may obtain by token exchange (repeatable)")
	fs.Var(&roles, "role", "`role` put in its client_credentials tokens (repeatable)")
	fs.Var(&perms, "permission", "`permission` put in its client_credentials tokens (repeatable)")
	tenant := fs.String("tenant", "", "`tenant` put in its tokens")
	method := fs.String("auth-method", "", "client_secret_basic (default), client_secret_post, private_key_jwt, tls_client_auth or none (public client)")
	spiffeID := fs.String("spiffe-id", "", "SPIFFE `ID` of a workload that authenticates with its SVID over mTLS (implies tls_client_auth)")
	jwksFile := fs.String("jwks-file", "", "JWK Set `file` with the public keys of a private_key_jwt client")
	ttl := fs.Duration("access-token-ttl", 0, "access token lifetime (default the server's, at most 15m)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless oauth client create --name N --grant client_credentials [--grant ...] [--scope \"a b\"]")
		fmt.Fprintln(fs.Output(), "         [--audience A] [--redirect-uri U] [--spiffe-id ID | --jwks-file F | --auth-method M] [-o json]")
		fmt.Fprintln(fs.Output(), "\nThe client secret (for secret clients) is printed once; only its hash is stored.")
		fs.PrintDefaults()
	}
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	if *name == "" {
		return e.errorf(ExitUsage, "oauth client create: --name is required")
	}
	if len(grants) == 0 {
		return e.errorf(ExitUsage, "oauth client create: give at least one --grant (client_credentials, authorization_code, refresh_token, token-exchange)")
	}
	req := token.ClientRequest{ID: *id, Name: *name, ClientSpec: token.ClientSpec{
		AuthMethod: *method, Scopes: splitWords(scopes), Audiences: auds, RedirectURIs: redirects, CORSOrigins: corsOrigins, ExchangeAudiences: xauds,
		Roles: roles, Permissions: perms, Tenant: *tenant, SPIFFEID: *spiffeID, AccessTokenTTL: token.Duration(*ttl),
	}}
	for _, g := range grants {
		if full, ok := grantAliases[g]; ok {
			g = full
		}
		req.GrantTypes = append(req.GrantTypes, g)
	}
	if *jwksFile != "" {
		b, err := readSmallFile(*jwksFile, 64<<10)
		if err != nil {
			return e.errorf(ExitUsage, "oauth client create: --jwks-file: %v", err)
		}
		if !json.Valid(b) {
			return e.errorf(ExitUsage, "oauth client create: --jwks-file %s is not JSON", *jwksFile)
		}
		req.JWKS = b
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var out token.ClientAnswer
	if err := c.do(ctx, "POST", token.AdminPathPrefix+"clients", req, &out); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(out)
	}
	printClient(e.Stdout, &out)
	if out.Secret != "" {
		fmt.Fprintf(e.Stdout, "client_secret:  %s\n\nThe secret is shown only now; store it in your secret manager.\n", out.Secret)
	}
	return ExitOK
}

func printClient(w io.Writer, c *token.ClientAnswer) {
	tw := newTable(w)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, v)
		}
	}
	row("client_id", c.ID)
	row("name", c.Name)
	row("auth_method", c.AuthMethod)
	row("grant_types", strings.Join(c.GrantTypes, " "))
	row("scopes", strings.Join(c.Scopes, " "))
	row("audiences", strings.Join(c.Audiences, " "))
	row("redirect_uris", strings.Join(c.RedirectURIs, " "))
	row("cors_origins", strings.Join(c.CORSOrigins, " "))
	row("spiffe_id", c.SPIFFEID)
	row("exchange_audiences", strings.Join(c.ExchangeAudiences, " "))
	row("roles", strings.Join(c.Roles, " "))
	row("permissions", strings.Join(c.Permissions, " "))
	row("tenant", c.Tenant)
	if c.AccessTokenTTL > 0 {
		row("access_token_ttl", time.Duration(c.AccessTokenTTL).String())
	}
	row("created_at", c.CreatedAt.UTC().Format(time.RFC3339))
	tw.Flush()
}

func runOAuthClientList(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("oauth client list")
	c, code, ok := cmd.connect(args)
	if !ok {
		return code
	}
	var out struct {
		Clients []*token.Client `json:"clients"`
	}
	if err := c.do(ctx, "GET", token.AdminPathPrefix+"clients", nil, &out); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printList(out.Clients, 0)
	}
	tw := newTable(e.Stdout)
	fmt.Fprintln(tw, "CLIENT ID\tTOKEN ENDPOINT AUTH METHOD\tGRANT TYPES\tSPIFFE ID")
	for _, cl := range out.Clients {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", cl.ID, cl.AuthMethod, strings.Join(shortGrants(cl.GrantTypes), ","), cl.SPIFFEID)
	}
	tw.Flush()
	return ExitOK
}

func shortGrants(gs []string) []string {
	out := make([]string, len(gs))
	for i, g := range gs {
		if g == token.GrantTokenExchange {
			g = "token-exchange"
		}
		out[i] = g
	}
	return out
}

// oauthByID runs a command that takes one positional argument (a client
// ID or user name) and calls method on path(arg).
func (e *Env) oauthByID(ctx context.Context, name, what string, args []string, method string, path func(string) string, body any,
	print func(raw json.RawMessage, af *adminFlags) int) int {
	cmd := e.newAdminCommand(name)
	fs := cmd.fs
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: moatless %s %s [-o json]\n", name, strings.ToUpper(what))
		fs.PrintDefaults()
	}
	arg, rest := positional(args)
	if code, ok := cmd.parse(rest); !ok {
		return code
	}
	if arg == "" {
		return e.errorf(ExitUsage, "%s: give the %s", name, what)
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var raw json.RawMessage
	if err := c.do(ctx, method, path(pathEscape(arg)), body, &raw); err != nil {
		return e.fail(err)
	}
	if print == nil {
		if !cmd.json() {
			fmt.Fprintf(e.Stdout, "%s: done\n", name)
		}
		return ExitOK
	}
	return print(raw, &cmd.af)
}

func (e *Env) printClientAnswer(raw json.RawMessage, af *adminFlags) int {
	var out token.ClientAnswer
	if err := json.Unmarshal(raw, &out); err != nil {
		return e.errorf(ExitFailure, "decode answer: %v", err)
	}
	if af.json() {
		return e.printJSON(out)
	}
	printClient(e.Stdout, &out)
	if out.Secret != "" {
		old := "the old one no longer works"
		if !out.PreviousSecretUntil.IsZero() {
			old = "the old one works until " + out.PreviousSecretUntil.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(e.Stdout, "client_secret:  %s\n\nThe new secret is shown only now; %s.\n", out.Secret, old)
	}
	return ExitOK
}

func runOAuthClientShow(ctx context.Context, e *Env, args []string) int {
	return e.oauthByID(ctx, "oauth client show", "client_id", args, "GET", func(id string) string { return token.AdminPathPrefix + "clients/" + id }, nil, e.printClientAnswer)
}

func runOAuthClientRotate(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("oauth client rotate-secret")
	fs := cmd.fs
	grace := fs.Duration("grace", 0, "keep the old secret valid this long (at most 168h), so clients can switch without downtime")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless oauth client rotate-secret CLIENT_ID [--grace 1h] [-o json]")
		fs.PrintDefaults()
	}
	id, rest := positional(args)
	if code, ok := cmd.parse(rest); !ok {
		return code
	}
	if id == "" {
		return e.errorf(ExitUsage, "oauth client rotate-secret: give the client_id")
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var body any
	if *grace != 0 {
		body = map[string]string{"grace": grace.String()}
	}
	var raw json.RawMessage
	if err := c.do(ctx, "POST", token.AdminPathPrefix+"clients/"+pathEscape(id)+"/rotate-secret", body, &raw); err != nil {
		return e.fail(err)
	}
	return e.printClientAnswer(raw, &cmd.af)
}

func runOAuthClientDelete(ctx context.Context, e *Env, args []string) int {
	return e.oauthByID(ctx, "oauth client delete", "client_id", args, "DELETE", func(id string) string { return token.AdminPathPrefix + "clients/" + id }, nil, nil)
}

func runOAuthUser(ctx context.Context, e *Env, args []string) int {
	return e.subcommand(ctx, "oauth user", []command{
		{"create", "add a user with a password (argon2id)", runOAuthUserCreate},
		{"list", "list users", runOAuthUserList},
		{"show", "show one user", runOAuthUserShow},
		{"delete", "delete a user", runOAuthUserDelete},
		{"set-password", "set a user's password", runOAuthUserPassword},
		{"mfa-enroll", "start TOTP enrolment: prints the otpauth URI (and a QR PNG with --qr-file)", runOAuthUserMFAEnroll},
		{"mfa-confirm", "finish enrolment with a code from the app; prints recovery codes once", runOAuthUserMFAConfirm},
		{"reset-mfa", "remove a user's TOTP key and recovery codes", runOAuthUserResetMFA},
	}, args)
}

// readPassword reads a password from a file ("-" for stdin): the first
// line, without its line ending. Passwords never come from flags, which
// other users can read in the process list.
func (e *Env) readPassword(path string) (string, error) {
	b, err := e.readInput(path, token.MaxPasswordLen+2)
	if err != nil {
		return "", err
	}
	pw, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimSuffix(pw, "\r"), nil
}

func runOAuthUserCreate(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("oauth user create")
	fs := cmd.fs
	name := fs.String("name", "", "user `name` (required)")
	pwFile := fs.String("password-file", "", "`file` holding the password on its first line, - for stdin (required)")
	email := fs.String("email", "", "e-mail `address` (in ID tokens with the email scope)")
	var roles, perms stringList
	fs.Var(&roles, "role", "`role` put in the user's tokens (repeatable)")
	fs.Var(&perms, "permission", "`permission` put in the user's tokens (repeatable)")
	tenant := fs.String("tenant", "", "`tenant` put in the user's tokens")
	requireMFA := fs.Bool("require-mfa", false, "make the user enrol TOTP at the next login and always use it")
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	if *name == "" || *pwFile == "" {
		return e.errorf(ExitUsage, "oauth user create: --name and --password-file are required")
	}
	pw, err := e.readPassword(*pwFile)
	if err != nil {
		return e.errorf(ExitUsage, "oauth user create: read password: %v", err)
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var out token.User
	req := token.UserRequest{Name: *name, Password: pw, UserSpec: token.UserSpec{Email: *email, Roles: roles, Permissions: perms, Tenant: *tenant, RequireMFA: *requireMFA}}
	if err := c.do(ctx, "POST", token.AdminPathPrefix+"users", req, &out); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(out)
	}
	fmt.Fprintf(e.Stdout, "created user %s (id %s)\n", out.Name, out.ID)
	return ExitOK
}

func runOAuthUserList(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("oauth user list")
	c, code, ok := cmd.connect(args)
	if !ok {
		return code
	}
	var out struct {
		Users []*token.User `json:"users"`
	}
	if err := c.do(ctx, "GET", token.AdminPathPrefix+"users", nil, &out); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printList(out.Users, 0)
	}
	tw := newTable(e.Stdout)
	fmt.Fprintln(tw, "NAME\tID\tMFA ENABLED\tROLES\tTENANT")
	for _, u := range out.Users {
		mfa := "off"
		switch {
		case u.TOTPEnabled:
			mfa = "on"
		case u.RequireMFA:
			mfa = "required"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", u.Name, u.ID, mfa, strings.Join(u.Roles, ","), u.Tenant)
	}
	tw.Flush()
	return ExitOK
}

func runOAuthUserShow(ctx context.Context, e *Env, args []string) int {
	return e.oauthByID(ctx, "oauth user show", "user name", args, "GET", func(n string) string { return token.AdminPathPrefix + "users/" + n }, nil,
		func(raw json.RawMessage, af *adminFlags) int {
			var u struct {
				token.User
				RecoveryCodesLeft int `json:"recovery_codes_left"`
			}
			if err := json.Unmarshal(raw, &u); err != nil {
				return e.errorf(ExitFailure, "decode answer: %v", err)
			}
			if af.json() {
				return e.printJSON(json.RawMessage(raw))
			}
			tw := newTable(e.Stdout)
			fmt.Fprintf(tw, "name:\t%s\nid:\t%s\nmfa:\t%v\nrequire_mfa:\t%v\nrecovery_codes_left:\t%d\n", u.Name, u.ID, u.TOTPEnabled, u.RequireMFA, u.RecoveryCodesLeft)
			if u.Email != "" {
				fmt.Fprintf(tw, "email:\t%s\n", u.Email)
			}
			if len(u.Roles) > 0 {
				fmt.Fprintf(tw, "roles:\t%s\n", strings.Join(u.Roles, " "))
			}
			if u.Tenant != "" {
				fmt.Fprintf(tw, "tenant:\t%s\n", u.Tenant)
			}
			tw.Flush()
			return ExitOK
		})
}

func runOAuthUserDelete(ctx context.Context, e *Env, args []string) int {
	return e.oauthByID(ctx, "oauth user delete", "user name", args, "DELETE", func(n string) string { return token.AdminPathPrefix + "users/" + n }, nil, nil)
}

func runOAuthUserResetMFA(ctx context.Context, e *Env, args []string) int {
	return e.oauthByID(ctx, "oauth user reset-mfa", "user name", args, "DELETE", func(n string) string { return token.AdminPathPrefix + "users/" + n + "/mfa" }, nil, nil)
}

func runOAuthUserPassword(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("oauth user set-password")
	fs := cmd.fs
	name := fs.String("name", "", "user `name` (required)")
	pwFile := fs.String("password-file", "", "`file` holding the new password on its first line, - for stdin (required)")
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	if *name == "" || *pwFile == "" {
		return e.errorf(ExitUsage, "oauth user set-password: --name and --password-file are required")
	}
	pw, err := e.readPassword(*pwFile)
	if err != nil {
		return e.errorf(ExitUsage, "oauth user set-password: read password: %v", err)
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	if err := c.do(ctx, "POST", token.AdminPathPrefix+"users/"+pathEscape(*name)+"/password", map[string]string{"password": pw}, nil); err != nil {
		return e.fail(err)
	}
	if !cmd.json() {
		fmt.Fprintf(e.Stdout, "password of %s changed\n", *name)
	}
	return ExitOK
}

func runOAuthUserMFAEnroll(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("oauth user mfa-enroll")
	fs := cmd.fs
	qr := fs.String("qr-file", "", "write the QR code as a PNG to this `file` (mode 0600)")
	name, rest := positional(args)
	if code, ok := cmd.parse(rest); !ok {
		return code
	}
	if name == "" {
		return e.errorf(ExitUsage, "oauth user mfa-enroll: give the user name")
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var out token.Enrollment
	if err := c.do(ctx, "POST", token.AdminPathPrefix+"users/"+pathEscape(name)+"/mfa", nil, &out); err != nil {
		return e.fail(err)
	}
	if *qr != "" {
		// The QR code is the TOTP key: 0600 even over an existing file.
		if err := writeAtomic(*qr, out.QRPNG, 0o600); err != nil {
			return e.errorf(ExitFailure, "oauth user mfa-enroll: write QR code: %v", err)
		}
	}
	if cmd.json() {
		return e.printJSON(out)
	}
	fmt.Fprintf(e.Stdout, "otpauth_uri:  %s\nsecret:       %s\n", out.URI, out.Secret)
	if *qr != "" {
		fmt.Fprintf(e.Stdout, "qr_code:      %s\n", *qr)
	}
	fmt.Fprintf(e.Stdout, "\nAdd the key to an authenticator app, then confirm with a code it shows:\n  moatless oauth user mfa-confirm %s --code 123456\n", name)
	return ExitOK
}

func runOAuthUserMFAConfirm(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("oauth user mfa-confirm")
	fs := cmd.fs
	code := fs.String("code", "", "the 6-digit `code` the authenticator app shows now (required)")
	name, rest := positional(args)
	if exit, ok := cmd.parse(rest); !ok {
		return exit
	}
	if name == "" || *code == "" {
		return e.errorf(ExitUsage, "oauth user mfa-confirm: give the user name and --code")
	}
	c, exit, ok := cmd.client()
	if !ok {
		return exit
	}
	var out token.Enrollment
	if err := c.do(ctx, "POST", token.AdminPathPrefix+"users/"+pathEscape(name)+"/mfa/confirm", map[string]string{"code": *code}, &out); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printJSON(map[string]any{"recovery_codes": out.RecoveryCodes})
	}
	fmt.Fprintf(e.Stdout, "MFA is on for %s. Recovery codes (each works once; shown only now):\n", name)
	for _, rc := range out.RecoveryCodes {
		fmt.Fprintf(e.Stdout, "  %s\n", rc)
	}
	return ExitOK
}

func runOAuthToken(ctx context.Context, e *Env, args []string) int {
	return e.subcommand(ctx, "oauth token", []command{
		{"get", "get an access token with client credentials (secret or SVID), as a client would", runOAuthTokenGet},
		{"revoke", "revoke an access or refresh token (or a token ID) everywhere", runOAuthTokenRevoke},
		{"introspect", "show whether a token is active and what it says (RFC 7662)", runOAuthTokenIntrospect},
		{"revoked", "list revoked access token IDs that have not expired", runOAuthTokenRevoked},
	}, args)
}

// tokenArg reads a token or client secret from a file ("-" for stdin); on
// the command line it would be visible in the process list.
func (e *Env) tokenArg(file string) (string, error) {
	b, err := e.readInput(file, tokenLimit)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func runOAuthTokenRevoke(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("oauth token revoke")
	fs := cmd.fs
	file := fs.String("file", "", "`file` holding the token, - for stdin")
	jti := fs.String("jti", "", "revoke by token `ID` instead (the jti claim)")
	exp := fs.String("expires-at", "", "with --jti: the token's expiry (RFC 3339); default 20 minutes from now, past any access token's lifetime")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless oauth token revoke (--file F | --jti ID [--expires-at T])")
		fmt.Fprintln(fs.Output(), "\nA revoked access token's ID goes out on the watch stream: every sidecar refuses it within a second.")
		fmt.Fprintln(fs.Output(), "A revoked refresh token revokes its whole family and the access tokens issued from it.")
		fs.PrintDefaults()
	}
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	var req token.RevokeRequest
	switch {
	case (*file == "") == (*jti == ""):
		return e.errorf(ExitUsage, "oauth token revoke: give --file (the token) or --jti")
	case *file != "":
		t, err := e.tokenArg(*file)
		if err != nil {
			return e.errorf(ExitUsage, "oauth token revoke: %v", err)
		}
		req.Token = t
	default:
		req.JTI = *jti
		if *exp != "" {
			t, err := time.Parse(time.RFC3339, *exp)
			if err != nil {
				return e.errorf(ExitUsage, "oauth token revoke: --expires-at: %v", err)
			}
			req.ExpiresAt = t
		}
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	if err := c.do(ctx, "POST", token.AdminPathPrefix+"tokens/revoke", req, nil); err != nil {
		return e.fail(err)
	}
	if !cmd.json() {
		fmt.Fprintln(e.Stdout, "revoked (an unknown or expired token needs no revocation and is accepted too)")
	}
	return ExitOK
}

func runOAuthTokenIntrospect(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("oauth token introspect")
	fs := cmd.fs
	file := fs.String("file", "", "`file` holding the token, - for stdin (required)")
	if code, ok := cmd.parse(args); !ok {
		return code
	}
	if *file == "" {
		return e.errorf(ExitUsage, "oauth token introspect: --file is required (- reads stdin)")
	}
	t, err := e.tokenArg(*file)
	if err != nil {
		return e.errorf(ExitUsage, "oauth token introspect: %v", err)
	}
	c, code, ok := cmd.client()
	if !ok {
		return code
	}
	var out map[string]any
	if err := c.do(ctx, "POST", token.AdminPathPrefix+"tokens/introspect", map[string]string{"token": t}, &out); err != nil {
		return e.fail(err)
	}
	// Introspection is a read: JSON is its natural form either way.
	return e.printJSON(out)
}

func runOAuthTokenRevoked(ctx context.Context, e *Env, args []string) int {
	cmd := e.newAdminCommand("oauth token revoked")
	c, code, ok := cmd.connect(args)
	if !ok {
		return code
	}
	var out struct {
		Revoked []token.RevokedToken `json:"revoked"`
	}
	if err := c.do(ctx, "GET", token.AdminPathPrefix+"tokens/revoked", nil, &out); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printList(out.Revoked, 0)
	}
	tw := newTable(e.Stdout)
	fmt.Fprintln(tw, "JTI\tEXPIRES AT")
	for _, r := range out.Revoked {
		fmt.Fprintf(tw, "%s\t%s\n", r.JTI, r.ExpiresAt.UTC().Format(time.RFC3339))
	}
	tw.Flush()
	return ExitOK
}

// runOAuthKeys is "oauth keys [list]" and "oauth keys rotate".
func runOAuthKeys(ctx context.Context, e *Env, args []string) int {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return runOAuthKeysList(ctx, e, args)
	}
	return e.subcommand(ctx, "oauth keys", []command{
		{"list", "list the signing keys: signing, next and retired-but-published", runOAuthKeysList},
		{"rotate", "make a new key that signs from now on (emergency rotation)", runOAuthKeysRotate},
		{"revoke", "remove a leaked key that no longer signs (rotate first): its tokens stop verifying", runOAuthKeysRevoke},
	}, args)
}

func runOAuthKeysRotate(ctx context.Context, e *Env, args []string) int {
	return e.oauthKeys(ctx, "oauth keys rotate", "POST", "keys/rotate", args)
}

func runOAuthKeysRevoke(ctx context.Context, e *Env, args []string) int {
	kid, rest := positional(args)
	if kid == "" && (slices.Contains(rest, "-h") || slices.Contains(rest, "-help") || slices.Contains(rest, "--help")) {
		return e.oauthKeys(ctx, "oauth keys revoke KID", "POST", "", rest) // prints the usage
	}
	if kid == "" {
		return e.errorf(ExitUsage, "oauth keys revoke: give the KID of a key that no longer signs (`moatless oauth keys list`; if it signs, `moatless oauth keys rotate` first)")
	}
	return e.oauthKeys(ctx, "oauth keys revoke", "POST", "keys/"+url.PathEscape(kid)+"/revoke", rest)
}

func runOAuthKeysList(ctx context.Context, e *Env, args []string) int {
	return e.oauthKeys(ctx, "oauth keys list", "GET", "keys", args)
}

func (e *Env) oauthKeys(ctx context.Context, name, method, path string, args []string) int {
	cmd := e.newAdminCommand(name)
	c, code, ok := cmd.connect(args)
	if !ok {
		return code
	}
	var out struct {
		Keys []token.KeyInfo `json:"keys"`
	}
	if err := c.do(ctx, method, token.AdminPathPrefix+path, nil, &out); err != nil {
		return e.fail(err)
	}
	if cmd.json() {
		return e.printList(out.Keys, 0)
	}
	tw := newTable(e.Stdout)
	fmt.Fprintln(tw, "KID\tALG\tSTATE\tACTIVATE AT\tRETIRE AT\tEXPIRE AT")
	for _, k := range out.Keys {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", k.KID, k.Alg, k.State, k.ActivateAt.Format(time.RFC3339), k.RetireAt.Format(time.RFC3339), k.ExpireAt.Format(time.RFC3339))
	}
	tw.Flush()
	return ExitOK
}

// runOAuthTokenGet is a client_credentials client: it asks the token
// endpoint for an access token with a client secret (read from a file) or
// with an X509-SVID over mutual TLS, and prints the token alone (the whole
// answer with -o json). It is for scripts and trying policies out; it
// uses the public token endpoint, not the admin API.
func runOAuthTokenGet(ctx context.Context, e *Env, args []string) int {
	fs := flag.NewFlagSet("oauth token get", flag.ContinueOnError)
	addr := fs.String("addr", "", "server address `host:port` (env MOATLESS_ADDR; default "+config.DefaultListen+")")
	issuer := fs.String("issuer", "", "issuer `URL` whose /oauth2/token to call (default https://ADDR)")
	cacert := fs.String("cacert", "", "PEM trust bundle to verify the server (env MOATLESS_CACERT; default: DATA_DIR/bundle.pem)")
	clientID := fs.String("client-id", "", "client_id (optional with --cert: the SVID names the client)")
	secretFile := fs.String("client-secret-file", "", "`file` holding the client secret, - for stdin")
	cert := fs.String("cert", "", "X509-SVID certificate `file` (PEM) for mutual TLS (tls_client_auth)")
	key := fs.String("key", "", "X509-SVID private key `file` (PEM)")
	var auds, resources stringList
	fs.Var(&auds, "audience", "`audience` to ask for (repeatable)")
	fs.Var(&resources, "resource", "resource `URI` to ask for (repeatable)")
	scope := fs.String("scope", "", "`scopes` to ask for, space-separated")
	output := fs.String("o", "text", "output format: text (the token alone) or json (the whole answer)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless oauth token get (--client-id ID --client-secret-file F | --cert F --key F) [--audience A] [--scope S] [-o json]")
		fs.PrintDefaults()
	}
	if code, ok := e.parseFlags(fs, args); !ok {
		return code
	}
	if *output != "text" && *output != "json" {
		return e.errorf(ExitUsage, "oauth token get: -o must be text or json, not %q", *output)
	}
	if (*cert == "") != (*key == "") {
		return e.errorf(ExitUsage, "oauth token get: --cert and --key go together")
	}
	if *secretFile == "" && *cert == "" {
		return e.errorf(ExitUsage, "oauth token get: give --client-secret-file (with --client-id) or --cert and --key")
	}
	if *secretFile != "" && *clientID == "" {
		return e.errorf(ExitUsage, "oauth token get: --client-secret-file needs --client-id")
	}
	a := firstNonEmpty(*addr, e.getenv("MOATLESS_ADDR"), config.DefaultListen)
	a = strings.TrimRight(strings.TrimPrefix(a, "https://"), "/")
	iss := firstNonEmpty(*issuer, "https://"+a)
	pool, err := serverTrust(*cacert, e.getenv)
	if err != nil {
		return e.errorf(ExitUsage, "oauth token get: %v", err)
	}
	tlsConf := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if *cert != "" {
		c, err := tls.LoadX509KeyPair(*cert, *key)
		if err != nil {
			return e.errorf(ExitUsage, "oauth token get: load SVID: %v", err)
		}
		tlsConf.Certificates = []tls.Certificate{c}
	}
	form := url.Values{"grant_type": {token.GrantClientCredentials}}
	if *scope != "" {
		form.Set("scope", *scope)
	}
	for _, v := range auds {
		form.Add("audience", v)
	}
	for _, v := range resources {
		form.Add("resource", v)
	}
	if *clientID != "" {
		form.Set("client_id", *clientID)
	}
	var secret string
	if *secretFile != "" {
		if secret, err = e.tokenArg(*secretFile); err != nil {
			return e.errorf(ExitUsage, "oauth token get: read client secret: %v", err)
		}
		form.Del("client_id")
	}
	req, err := http.NewRequestWithContext(ctx, "POST", iss+"/oauth2/token", strings.NewReader(form.Encode()))
	if err != nil {
		return e.errorf(ExitUsage, "oauth token get: %v", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if secret != "" {
		req.SetBasicAuth(url.QueryEscape(*clientID), url.QueryEscape(secret))
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConf}, Timeout: 30 * time.Second}
	resp, err := hc.Do(req)
	if err != nil {
		return e.errorf(ExitFailure, "oauth token get: %v", reachError(iss, serverTrustPath(*cacert, e.getenv), err))
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return e.errorf(ExitFailure, "oauth token get: read answer: %v", err)
	}
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		return e.errorf(ExitFailure, "oauth token get: the server answered %d with no JSON", resp.StatusCode)
	}
	if resp.StatusCode != http.StatusOK {
		code := ExitFailure
		switch resp.StatusCode {
		case http.StatusUnauthorized:
			code = ExitDenied
		case http.StatusBadRequest:
			code = ExitUsage
		}
		return e.errorf(code, "oauth token get: %v: %v", out["error"], out["error_description"])
	}
	if *output == "json" {
		return e.printJSON(out)
	}
	fmt.Fprintln(e.Stdout, out["access_token"])
	return ExitOK
}
