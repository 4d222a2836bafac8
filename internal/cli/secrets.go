package cli

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/cli/dataplane"
	"github.com/moatless/moatless/internal/config"
	"github.com/moatless/moatless/internal/render"
	"github.com/moatless/moatless/internal/secrets"
)

// The "moatless secrets" commands speak the server's Vault-shaped API
// (/v1/...) with the admin client: the admin credential, or any client
// token of the secrets service in MOATLESS_TOKEN, or a workload's SVID as
// --client-cert/--client-key.

var secretsCommands = []command{
	{"kv", "KV version 2: put, get, patch, delete, undelete, destroy, list, metadata", runSecretsKV},
	{"transit", "encryption as a service: create, list, read, rotate, config, encrypt, decrypt, rewrap, sign, verify", runSecretsTransit},
	{"db", "dynamic PostgreSQL credentials: config, role, creds, rotate-root", runSecretsDB},
	{"lease", "leases: lookup, renew, revoke, list", runSecretsLease},
	{"policy", "access policies: apply, get, list, delete, history, rollback", runSecretsPolicy},
	{"read", "read any secrets API path (GET /v1/PATH)", func(ctx context.Context, e *Env, a []string) int { return runSecretsRaw(ctx, e, "read", a) }},
	{"write", "write any secrets API path with KEY=VALUE fields (POST /v1/PATH)", func(ctx context.Context, e *Env, a []string) int { return runSecretsRaw(ctx, e, "write", a) }},
	{"list", "list any secrets API path (LIST /v1/PATH)", func(ctx context.Context, e *Env, a []string) int { return runSecretsRaw(ctx, e, "list", a) }},
	{"delete", "delete any secrets API path (DELETE /v1/PATH)", func(ctx context.Context, e *Env, a []string) int { return runSecretsRaw(ctx, e, "delete", a) }},
	{"status", "show whether the secrets service is sealed", runSecretsStatus},
	{"unseal", "give a sealed secrets service its root key or passphrase", runSecretsUnseal},
	{"render", "render secrets and SVIDs into files from templates, keep them fresh (like Vault Agent)", runSecretsRender},
}

func runSecrets(ctx context.Context, e *Env, args []string) int {
	return e.subcommand(ctx, "secrets", secretsCommands, args)
}

// vaultResponse is Vault's envelope as the CLI reads it.
type vaultResponse struct {
	RequestID     string          `json:"request_id"`
	LeaseID       string          `json:"lease_id"`
	Renewable     bool            `json:"renewable"`
	LeaseDuration int64           `json:"lease_duration"`
	Data          json.RawMessage `json:"data"`
	Warnings      []string        `json:"warnings"`
	Auth          json.RawMessage `json:"auth"`
}

// secretsCmd is one secrets command: flags, positionals, client.
type secretsCmd struct {
	*adminCommand
	usage string
	args  []string
	nargs [2]int // minimum, maximum positionals (-1: any)
}

func (e *Env) newSecretsCmd(name, usage string, minArgs, maxArgs int) *secretsCmd {
	c := &secretsCmd{adminCommand: e.newAdminCommand("secrets " + name), usage: usage, nargs: [2]int{minArgs, maxArgs}}
	c.fs.Usage = func() {
		fmt.Fprintln(c.fs.Output(), "Usage: moatless secrets "+name+" "+usage)
		c.fs.PrintDefaults()
	}
	return c
}

// parse parses flags anywhere among the positional arguments.
func (c *secretsCmd) parse(args []string) (int, bool) {
	for {
		if code, ok := c.e.parseFlagSet(c.fs, args); !ok {
			return code, false
		}
		rest := c.fs.Args()
		if len(rest) == 0 {
			break
		}
		c.args = append(c.args, rest[0])
		args = rest[1:]
	}
	if len(c.args) < c.nargs[0] || (c.nargs[1] >= 0 && len(c.args) > c.nargs[1]) {
		return c.e.errorf(ExitUsage, "%s: usage: moatless %s %s", c.fs.Name(), c.fs.Name(), c.usage), false
	}
	return 0, true
}

// call sends one request and decodes the envelope (nil for 204).
func (c *secretsCmd) call(ctx context.Context, cl *adminClient, method, path string, body any) (*vaultResponse, error) {
	var out vaultResponse
	if err := cl.do(ctx, method, "/v1/"+strings.TrimPrefix(path, "/"), body, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// run is parse, client, call and print: the shape of most commands.
func (c *secretsCmd) run(ctx context.Context, args []string, build func() (method, path string, body any, err error), print func(*vaultResponse)) int {
	if code, ok := c.parse(args); !ok {
		return code
	}
	method, path, body, err := build()
	if err != nil {
		return c.e.errorf(ExitUsage, "%s: %v", c.fs.Name(), err)
	}
	cl, code, ok := c.client()
	if !ok {
		return code
	}
	resp, err := c.call(ctx, cl, method, path, body)
	if err != nil {
		return c.e.fail(err)
	}
	if c.json() {
		if resp == nil || (resp.RequestID == "" && resp.Data == nil) {
			return c.e.printJSON(map[string]any{})
		}
		return c.e.printJSON(resp)
	}
	if print != nil {
		print(resp)
	} else {
		printData(c.e, resp)
	}
	return ExitOK
}

// printData prints an envelope's data as KEY VALUE lines (lease fields
// first), or "Success!" for an empty answer.
func printData(e *Env, r *vaultResponse) {
	if r == nil || (len(r.Data) == 0 || string(r.Data) == "null") && r.LeaseID == "" && len(r.Auth) == 0 {
		fmt.Fprintln(e.Stdout, "Success!")
		return
	}
	tw := newTable(e.Stdout)
	fmt.Fprintln(tw, "KEY\tVALUE")
	if r.LeaseID != "" {
		fmt.Fprintf(tw, "lease_id\t%s\nlease_duration\t%s\nlease_renewable\t%v\n", r.LeaseID, time.Duration(r.LeaseDuration)*time.Second, r.Renewable)
	}
	for _, kv := range [][]byte{r.Auth, r.Data} {
		var m map[string]any
		if json.Unmarshal(kv, &m) != nil {
			continue
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(tw, "%s\t%s\n", k, valueString(m[k]))
		}
	}
	tw.Flush()
	for _, w := range r.Warnings {
		fmt.Fprintf(e.Stderr, "warning: %s\n", w)
	}
}

func valueString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case nil:
		return "n/a"
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// kvPairs parses KEY=VALUE arguments: VALUE "@FILE" reads a file, "-"
// standard input (once). Values that parse as JSON objects or arrays
// stay strings: secrets are strings unless --json-values is given.
func (e *Env) kvPairs(pairs []string) (map[string]any, error) {
	out := map[string]any{}
	stdinUsed := false
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("%q: want KEY=VALUE (VALUE @FILE reads a file, - standard input)", p)
		}
		switch {
		case v == "-":
			if stdinUsed {
				return nil, errors.New("only one value may come from standard input")
			}
			stdinUsed = true
			b, err := e.readInput("-", secrets.MaxBody)
			if err != nil {
				return nil, err
			}
			v = strings.TrimRight(string(b), "\n")
		case strings.HasPrefix(v, "@"):
			b, err := e.readInput(v[1:], secrets.MaxBody)
			if err != nil {
				return nil, err
			}
			v = string(b)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("key %q given twice", k)
		}
		out[k] = v
	}
	return out, nil
}

func runSecretsRaw(ctx context.Context, e *Env, verb string, args []string) int {
	usage := "PATH"
	if verb == "write" {
		usage = "PATH [KEY=VALUE ...]"
	}
	c := e.newSecretsCmd(verb, usage+" [-o json]", 1, map[bool]int{true: -1, false: 1}[verb == "write"])
	return c.run(ctx, args, func() (string, string, any, error) {
		method := map[string]string{"read": "GET", "write": "POST", "list": "LIST", "delete": "DELETE"}[verb]
		if verb != "write" {
			return method, c.args[0], nil, nil
		}
		body, err := e.kvPairs(c.args[1:])
		return method, c.args[0], body, err
	}, nil)
}

func runSecretsKV(ctx context.Context, e *Env, args []string) int {
	return e.subcommand(ctx, "secrets kv", []command{
		{"put", "write a new version: PATH KEY=VALUE ...", func(ctx context.Context, e *Env, a []string) int { return runKVWrite(ctx, e, "put", a) }},
		{"patch", "change some keys of the current version: PATH KEY=VALUE ...", func(ctx context.Context, e *Env, a []string) int { return runKVWrite(ctx, e, "patch", a) }},
		{"get", "read the current (or --version) version: PATH", runKVGet},
		{"delete", "soft-delete the current (or --versions) versions: PATH", func(ctx context.Context, e *Env, a []string) int { return runKVVersions(ctx, e, "delete", a) }},
		{"undelete", "restore soft-deleted --versions: PATH", func(ctx context.Context, e *Env, a []string) int { return runKVVersions(ctx, e, "undelete", a) }},
		{"destroy", "erase --versions for good: PATH", func(ctx context.Context, e *Env, a []string) int { return runKVVersions(ctx, e, "destroy", a) }},
		{"list", "list keys under a folder: [PATH]", runKVList},
		{"metadata", "show, set or delete a secret's metadata: get|put|delete PATH", runKVMetadata},
	}, args)
}

func kvPath(mount, kind, p string) string {
	return mount + "/" + kind + "/" + strings.Trim(p, "/")
}

func runKVWrite(ctx context.Context, e *Env, verb string, args []string) int {
	c := e.newSecretsCmd("kv "+verb, "PATH KEY=VALUE ... [--cas N] [--mount secret] [-o json]", 2, -1)
	mount := c.fs.String("mount", secrets.DefaultKVMount, "KV `mount`")
	cas := c.fs.Int64("cas", -1, "check-and-set: write only if the current version is `N` (0: only if the secret does not exist)")
	return c.run(ctx, args, func() (string, string, any, error) {
		data, err := e.kvPairs(c.args[1:])
		if err != nil {
			return "", "", nil, err
		}
		body := map[string]any{"data": data}
		if *cas >= 0 {
			body["options"] = map[string]any{"cas": *cas}
		}
		method := "POST"
		if verb == "patch" {
			method = "PATCH"
		}
		return method, kvPath(*mount, "data", c.args[0]), body, nil
	}, func(r *vaultResponse) {
		var m struct {
			Version int64  `json:"version"`
			Created string `json:"created_time"`
		}
		json.Unmarshal(r.Data, &m)
		fmt.Fprintf(e.Stdout, "version %d of %s written at %s\n", m.Version, c.args[0], m.Created)
	})
}

func runKVGet(ctx context.Context, e *Env, args []string) int {
	c := e.newSecretsCmd("kv get", "PATH [--version N] [--field KEY] [--mount secret] [-o json]", 1, 1)
	mount := c.fs.String("mount", secrets.DefaultKVMount, "KV `mount`")
	version := c.fs.Int64("version", 0, "read version `N` (default: the current one)")
	field := c.fs.String("field", "", "print only this `key`'s value")
	return c.run(ctx, args, func() (string, string, any, error) {
		p := kvPath(*mount, "data", c.args[0])
		if *version > 0 {
			p += "?version=" + strconv.FormatInt(*version, 10)
		}
		return "GET", p, nil, nil
	}, func(r *vaultResponse) {
		var m struct {
			Data     map[string]any `json:"data"`
			Metadata map[string]any `json:"metadata"`
		}
		json.Unmarshal(r.Data, &m)
		if *field != "" {
			v, ok := m.Data[*field]
			if !ok {
				fmt.Fprintf(e.Stderr, "moatless: no key %q in %s\n", *field, c.args[0])
				return
			}
			fmt.Fprintln(e.Stdout, valueString(v))
			return
		}
		fmt.Fprintf(e.Stdout, "== %s: version %s, created %s ==\n", c.args[0], valueString(m.Metadata["version"]), valueString(m.Metadata["created_time"]))
		tw := newTable(e.Stdout)
		fmt.Fprintln(tw, "KEY\tVALUE")
		keys := make([]string, 0, len(m.Data))
		for k := range m.Data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(tw, "%s\t%s\n", k, valueString(m.Data[k]))
		}
		tw.Flush()
	})
}

func parseVersions(s string) ([]int64, error) {
	var out []int64
	for _, p := range strings.Split(s, ",") {
		v, err := strconv.ParseInt(strings.TrimSpace(p), 10, 64)
		if err != nil || v < 1 {
			return nil, fmt.Errorf("--versions %q: want version numbers like 1,2,5", s)
		}
		out = append(out, v)
	}
	return out, nil
}

func runKVVersions(ctx context.Context, e *Env, verb string, args []string) int {
	c := e.newSecretsCmd("kv "+verb, "PATH [--versions 1,2] [--mount secret]", 1, 1)
	mount := c.fs.String("mount", secrets.DefaultKVMount, "KV `mount`")
	vs := c.fs.String("versions", "", "comma-separated version `numbers`")
	return c.run(ctx, args, func() (string, string, any, error) {
		if *vs == "" {
			if verb != "delete" {
				return "", "", nil, errors.New("--versions is required")
			}
			return "DELETE", kvPath(*mount, "data", c.args[0]), nil, nil
		}
		versions, err := parseVersions(*vs)
		if err != nil {
			return "", "", nil, err
		}
		return "POST", kvPath(*mount, verb, c.args[0]), map[string]any{"versions": versions}, nil
	}, nil)
}

func runKVList(ctx context.Context, e *Env, args []string) int {
	c := e.newSecretsCmd("kv list", "[PATH] [--mount secret] [-o json]", 0, 1)
	mount := c.fs.String("mount", secrets.DefaultKVMount, "KV `mount`")
	return c.run(ctx, args, func() (string, string, any, error) {
		p := *mount + "/metadata"
		if len(c.args) == 1 && strings.Trim(c.args[0], "/") != "" {
			p += "/" + strings.Trim(c.args[0], "/")
		}
		return "LIST", p, nil, nil
	}, func(r *vaultResponse) { printKeys(e, r) })
}

func printKeys(e *Env, r *vaultResponse) {
	var m struct {
		Keys []string `json:"keys"`
	}
	json.Unmarshal(r.Data, &m)
	for _, k := range m.Keys {
		fmt.Fprintln(e.Stdout, k)
	}
}

func runKVMetadata(ctx context.Context, e *Env, args []string) int {
	verb := ""
	if len(args) > 0 {
		verb = args[0]
	}
	if verb != "get" && verb != "put" && verb != "delete" {
		return e.errorf(ExitUsage, "secrets kv metadata: want get, put or delete")
	}
	c := e.newSecretsCmd("kv metadata "+verb, "PATH [--max-versions N] [--cas-required] [--delete-version-after D] [--custom KEY=VALUE ...]", 1, 1)
	mount := c.fs.String("mount", secrets.DefaultKVMount, "KV `mount`")
	maxV := c.fs.Int64("max-versions", -1, "keep at most `N` versions (0: the mount's default, 10)")
	casReq := c.fs.String("cas-required", "", "require check-and-set on writes: true or false")
	dva := c.fs.Duration("delete-version-after", -1, "soft-delete each version this long after it is written (0: never)")
	var custom stringList
	c.fs.Var(&custom, "custom", "custom metadata `KEY=VALUE` (repeatable)")
	return c.run(ctx, args[1:], func() (string, string, any, error) {
		p := kvPath(*mount, "metadata", c.args[0])
		switch verb {
		case "get":
			return "GET", p, nil, nil
		case "delete":
			return "DELETE", p, nil, nil
		}
		body := map[string]any{}
		if *maxV >= 0 {
			body["max_versions"] = *maxV
		}
		if *casReq != "" {
			b, err := strconv.ParseBool(*casReq)
			if err != nil {
				return "", "", nil, errors.New("--cas-required: true or false")
			}
			body["cas_required"] = b
		}
		if *dva >= 0 {
			body["delete_version_after"] = dva.String()
		}
		if len(custom) > 0 {
			m := map[string]string{}
			for _, kv := range custom {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return "", "", nil, fmt.Errorf("--custom %q: want KEY=VALUE", kv)
				}
				m[k] = v
			}
			body["custom_metadata"] = m
		}
		return "POST", p, body, nil
	}, nil)
}

func runSecretsTransit(ctx context.Context, e *Env, args []string) int {
	one := func(name, usage, method string, pathFn func(a []string) string, body func(c *secretsCmd) (any, error), setup func(c *secretsCmd), print func(e *Env, c *secretsCmd, r *vaultResponse)) command {
		return command{name, usage, func(ctx context.Context, e *Env, args []string) int {
			c := e.newSecretsCmd("transit "+name, usage, 1, 2)
			if strings.HasPrefix(usage, "[") {
				c.nargs = [2]int{0, 0}
			}
			if setup != nil {
				setup(c)
			}
			var pr func(*vaultResponse)
			if print != nil {
				pr = func(r *vaultResponse) { print(e, c, r) }
			}
			return c.run(ctx, args, func() (string, string, any, error) {
				var b any
				if body != nil {
					var err error
					if b, err = body(c); err != nil {
						return "", "", nil, err
					}
				}
				return method, pathFn(c.args), b, nil
			}, pr)
		}}
	}
	var typ, ctxFlag *string
	var derived, conv *bool
	var minDec, minEnc *int
	var delAllowed *string
	printField := func(f string) func(e *Env, c *secretsCmd, r *vaultResponse) {
		return func(e *Env, c *secretsCmd, r *vaultResponse) {
			var m map[string]any
			json.Unmarshal(r.Data, &m)
			fmt.Fprintln(e.Stdout, valueString(m[f]))
		}
	}
	ctxSetup := func(c *secretsCmd) { ctxFlag = c.fs.String("context", "", "derivation `context` (derived keys)") }
	withCtx := func(body map[string]any) map[string]any {
		if *ctxFlag != "" {
			body["context"] = base64.StdEncoding.EncodeToString([]byte(*ctxFlag))
		}
		return body
	}
	input := func(c *secretsCmd) ([]byte, error) {
		if len(c.args) < 2 {
			return nil, errors.New("the value is required (- reads standard input)")
		}
		if c.args[1] == "-" {
			b, err := e.readInput("-", secrets.MaxBody)
			return bytes.TrimRight(b, "\n"), err
		}
		return []byte(c.args[1]), nil
	}
	return e.subcommand(ctx, "secrets transit", []command{
		one("create", "KEY [--type aes256-gcm96|chacha20-poly1305|ed25519|ecdsa-p256] [--derived] [--convergent]", "POST",
			func(a []string) string { return "transit/keys/" + a[0] },
			func(c *secretsCmd) (any, error) {
				return map[string]any{"type": *typ, "derived": *derived, "convergent_encryption": *conv}, nil
			},
			func(c *secretsCmd) {
				typ = c.fs.String("type", "aes256-gcm96", "key `type`")
				derived = c.fs.Bool("derived", false, "derive a key per context")
				conv = c.fs.Bool("convergent", false, "convergent encryption (equal inputs, equal ciphertexts; needs --derived)")
			}, func(e *Env, c *secretsCmd, r *vaultResponse) {
				var m map[string]any
				json.Unmarshal(r.Data, &m)
				fmt.Fprintf(e.Stdout, "key %s (%s) at version %s\n", c.args[0], valueString(m["type"]), valueString(m["latest_version"]))
			}),
		{"list", "list keys", func(ctx context.Context, e *Env, args []string) int {
			c := e.newSecretsCmd("transit list", "[-o json]", 0, 0)
			return c.run(ctx, args, func() (string, string, any, error) { return "LIST", "transit/keys", nil, nil }, func(r *vaultResponse) { printKeys(e, r) })
		}},
		one("read", "KEY [-o json]", "GET", func(a []string) string { return "transit/keys/" + a[0] }, nil, nil, nil),
		one("rotate", "KEY", "POST", func(a []string) string { return "transit/keys/" + a[0] + "/rotate" }, nil, nil,
			func(e *Env, c *secretsCmd, r *vaultResponse) {
				var m map[string]any
				json.Unmarshal(r.Data, &m)
				fmt.Fprintf(e.Stdout, "key %s rotated: latest version %s\n", c.args[0], valueString(m["latest_version"]))
			}),
		one("config", "KEY [--min-decryption-version N] [--min-encryption-version N] [--deletion-allowed true|false]", "POST",
			func(a []string) string { return "transit/keys/" + a[0] + "/config" },
			func(c *secretsCmd) (any, error) {
				b := map[string]any{}
				if *minDec > 0 {
					b["min_decryption_version"] = *minDec
				}
				if *minEnc >= 0 {
					b["min_encryption_version"] = *minEnc
				}
				if *delAllowed != "" {
					v, err := strconv.ParseBool(*delAllowed)
					if err != nil {
						return nil, errors.New("--deletion-allowed: true or false")
					}
					b["deletion_allowed"] = v
				}
				return b, nil
			},
			func(c *secretsCmd) {
				minDec = c.fs.Int("min-decryption-version", 0, "oldest `version` that may still decrypt")
				minEnc = c.fs.Int("min-encryption-version", -1, "oldest `version` that may encrypt (0: latest)")
				delAllowed = c.fs.String("deletion-allowed", "", "allow deleting the key: true or false")
			}, nil),
		one("encrypt", "KEY PLAINTEXT|- [--context C]", "POST", func(a []string) string { return "transit/encrypt/" + a[0] },
			func(c *secretsCmd) (any, error) {
				pt, err := input(c)
				if err != nil {
					return nil, err
				}
				return withCtx(map[string]any{"plaintext": base64.StdEncoding.EncodeToString(pt)}), nil
			}, ctxSetup, printField("ciphertext")),
		one("decrypt", "KEY CIPHERTEXT|- [--context C]", "POST", func(a []string) string { return "transit/decrypt/" + a[0] },
			func(c *secretsCmd) (any, error) {
				ct, err := input(c)
				if err != nil {
					return nil, err
				}
				return withCtx(map[string]any{"ciphertext": string(ct)}), nil
			}, ctxSetup, func(e *Env, c *secretsCmd, r *vaultResponse) {
				var m struct {
					Plaintext string `json:"plaintext"`
				}
				json.Unmarshal(r.Data, &m)
				b, _ := base64.StdEncoding.DecodeString(m.Plaintext)
				fmt.Fprintln(e.Stdout, string(b))
			}),
		one("rewrap", "KEY CIPHERTEXT|- [--context C]", "POST", func(a []string) string { return "transit/rewrap/" + a[0] },
			func(c *secretsCmd) (any, error) {
				ct, err := input(c)
				if err != nil {
					return nil, err
				}
				return withCtx(map[string]any{"ciphertext": string(ct)}), nil
			}, ctxSetup, printField("ciphertext")),
		one("sign", "KEY INPUT|-", "POST", func(a []string) string { return "transit/sign/" + a[0] },
			func(c *secretsCmd) (any, error) {
				in, err := input(c)
				return map[string]any{"input": base64.StdEncoding.EncodeToString(in)}, err
			}, nil, printField("signature")),
		{"verify", "KEY INPUT SIGNATURE", func(ctx context.Context, e *Env, args []string) int {
			c := e.newSecretsCmd("transit verify", "KEY INPUT SIGNATURE [-o json]", 3, 3)
			return c.run(ctx, args, func() (string, string, any, error) {
				return "POST", "transit/verify/" + c.args[0], map[string]any{"input": base64.StdEncoding.EncodeToString([]byte(c.args[1])), "signature": c.args[2]}, nil
			}, func(r *vaultResponse) {
				var m struct {
					Valid bool `json:"valid"`
				}
				json.Unmarshal(r.Data, &m)
				fmt.Fprintln(e.Stdout, m.Valid)
			})
		}},
	}, args)
}

func runSecretsDB(ctx context.Context, e *Env, args []string) int {
	return e.subcommand(ctx, "secrets db", []command{
		{"config", "configure a connection: NAME --connection-url URL --username U --password-file F --allowed-roles R,...", func(ctx context.Context, e *Env, args []string) int {
			c := e.newSecretsCmd("db config", "NAME --connection-url 'postgres://{{username}}:{{password}}@HOST:5432/DB' --username U --password-file F --allowed-roles R1,R2", 1, 1)
			u := c.fs.String("connection-url", "", "PostgreSQL `URL` with {{username}} and {{password}} placeholders")
			user := c.fs.String("username", "", "admin `user` that creates users")
			pwFile := c.fs.String("password-file", "", "`file` with the admin password (- for stdin)")
			roles := c.fs.String("allowed-roles", "", "comma-separated role `names` (or *) that may use the connection")
			return c.run(ctx, args, func() (string, string, any, error) {
				if *u == "" || *pwFile == "" {
					return "", "", nil, errors.New("--connection-url and --password-file are required")
				}
				pw, err := e.readInput(*pwFile, tokenLimit)
				if err != nil {
					return "", "", nil, err
				}
				return "POST", "database/config/" + c.args[0], map[string]any{"plugin_name": secrets.PluginPostgres, "connection_url": *u,
					"username": *user, "password": strings.TrimRight(string(pw), "\r\n"), "allowed_roles": *roles}, nil
			}, nil)
		}},
		{"role", "create a role: NAME --db CONN --creation-statements SQL|@FILE [--default-ttl D] [--max-ttl D]", func(ctx context.Context, e *Env, args []string) int {
			c := e.newSecretsCmd("db role", "NAME --db CONN --creation-statements SQL|@FILE [--revocation-statements SQL|@FILE] [--default-ttl 1h] [--max-ttl 24h]", 1, 1)
			db := c.fs.String("db", "", "connection `name`")
			cre := c.fs.String("creation-statements", "", "SQL with {{name}}, {{password}}, {{expiration}} (or @FILE)")
			rev := c.fs.String("revocation-statements", "", "SQL (or @FILE); default: revoke grants and drop the role")
			def := c.fs.Duration("default-ttl", 0, "lease lifetime")
			maxT := c.fs.Duration("max-ttl", 0, "longest a lease may be renewed to")
			return c.run(ctx, args, func() (string, string, any, error) {
				body := map[string]any{"db_name": *db}
				for k, v := range map[string]string{"creation_statements": *cre, "revocation_statements": *rev} {
					if strings.HasPrefix(v, "@") {
						b, err := e.readInput(v[1:], 1<<20)
						if err != nil {
							return "", "", nil, err
						}
						v = string(b)
					}
					if v != "" {
						body[k] = v
					}
				}
				if *def > 0 {
					body["default_ttl"] = def.String()
				}
				if *maxT > 0 {
					body["max_ttl"] = maxT.String()
				}
				return "POST", "database/roles/" + c.args[0], body, nil
			}, nil)
		}},
		{"creds", "create a database user: ROLE (prints username, password and lease)", func(ctx context.Context, e *Env, args []string) int {
			c := e.newSecretsCmd("db creds", "ROLE [-o json]", 1, 1)
			return c.run(ctx, args, func() (string, string, any, error) { return "GET", "database/creds/" + c.args[0], nil, nil }, nil)
		}},
		{"rotate-root", "give the connection's admin user a new password only Moatless knows: NAME", func(ctx context.Context, e *Env, args []string) int {
			c := e.newSecretsCmd("db rotate-root", "NAME", 1, 1)
			return c.run(ctx, args, func() (string, string, any, error) { return "POST", "database/rotate-root/" + c.args[0], nil, nil }, nil)
		}},
	}, args)
}

func runSecretsLease(ctx context.Context, e *Env, args []string) int {
	return e.subcommand(ctx, "secrets lease", []command{
		{"lookup", "LEASE_ID", func(ctx context.Context, e *Env, args []string) int {
			c := e.newSecretsCmd("lease lookup", "LEASE_ID [-o json]", 1, 1)
			return c.run(ctx, args, func() (string, string, any, error) {
				return "PUT", "sys/leases/lookup", map[string]any{"lease_id": c.args[0]}, nil
			}, nil)
		}},
		{"renew", "LEASE_ID [--increment D]", func(ctx context.Context, e *Env, args []string) int {
			c := e.newSecretsCmd("lease renew", "LEASE_ID [--increment 1h] [-o json]", 1, 1)
			inc := c.fs.Duration("increment", 0, "requested lifetime from now (default: the role's default_ttl)")
			return c.run(ctx, args, func() (string, string, any, error) {
				b := map[string]any{"lease_id": c.args[0]}
				if *inc > 0 {
					b["increment"] = int64(inc.Seconds())
				}
				return "PUT", "sys/leases/renew", b, nil
			}, nil)
		}},
		{"revoke", "LEASE_ID, or --prefix PREFIX", func(ctx context.Context, e *Env, args []string) int {
			c := e.newSecretsCmd("lease revoke", "LEASE_ID | --prefix PREFIX", 0, 1)
			prefix := c.fs.String("prefix", "", "revoke every lease under this `prefix` (needs sudo)")
			return c.run(ctx, args, func() (string, string, any, error) {
				switch {
				case *prefix != "" && len(c.args) == 0:
					return "PUT", "sys/leases/revoke-prefix/" + strings.Trim(*prefix, "/"), nil, nil
				case *prefix == "" && len(c.args) == 1:
					return "PUT", "sys/leases/revoke", map[string]any{"lease_id": c.args[0]}, nil
				}
				return "", "", nil, errors.New("give a LEASE_ID or --prefix, not both")
			}, nil)
		}},
		{"list", "PREFIX", func(ctx context.Context, e *Env, args []string) int {
			c := e.newSecretsCmd("lease list", "PREFIX [-o json]", 1, 1)
			return c.run(ctx, args, func() (string, string, any, error) {
				return "LIST", "sys/leases/lookup/" + strings.Trim(c.args[0], "/"), nil, nil
			}, func(r *vaultResponse) { printKeys(e, r) })
		}},
	}, args)
}

func runSecretsPolicy(ctx context.Context, e *Env, args []string) int {
	return e.subcommand(ctx, "secrets policy", []command{
		{"apply", "-f FILE [-f ...] [--name NAME] [--dry-run]: YAML/JSON policies, or Vault HCL with --name", func(ctx context.Context, e *Env, args []string) int {
			c := e.newSecretsCmd("policy apply", "-f FILE [-f FILE ...] [--name NAME] [--dry-run] [-o json]", 0, 0)
			var files stringList
			c.fs.Var(&files, "f", "policy `file` (repeatable; - for stdin): YAML/JSON, or Vault HCL")
			name := c.fs.String("name", "", "policy `name` for HCL or Vault JSON files (which carry none)")
			dry := c.fs.Bool("dry-run", false, "validate and show what would change, write nothing")
			return c.run(ctx, args, func() (string, string, any, error) {
				if len(files) == 0 {
					return "", "", nil, errors.New("-f FILE is required")
				}
				var pf []secrets.PolicyFile
				for _, f := range files {
					b, err := e.readInput(f, 1<<20)
					if err != nil {
						return "", "", nil, err
					}
					pf = append(pf, secrets.PolicyFile{Name: f, Policy: *name, Content: string(b)})
				}
				return "POST", "sys/policies/apply", map[string]any{"files": pf, "dry_run": *dry}, nil
			}, func(r *vaultResponse) { printSecretsPolicyChange(e, r) })
		}},
		{"get", "NAME [--version N]", func(ctx context.Context, e *Env, args []string) int {
			c := e.newSecretsCmd("policy get", "NAME [--version N] [-o json]", 1, 1)
			v := c.fs.Uint64("version", 0, "policy set `version` (default: current)")
			return c.run(ctx, args, func() (string, string, any, error) {
				p := "sys/policies/acl/" + url.PathEscape(c.args[0])
				if *v > 0 {
					p += "?version=" + strconv.FormatUint(*v, 10)
				}
				return "GET", p, nil, nil
			}, func(r *vaultResponse) {
				var m struct {
					Name     string         `json:"name"`
					Policy   string         `json:"policy"`
					Subjects map[string]any `json:"subjects"`
				}
				json.Unmarshal(r.Data, &m)
				if len(m.Subjects) > 0 {
					b, _ := json.Marshal(m.Subjects)
					fmt.Fprintf(e.Stdout, "# subjects: %s\n", b)
				}
				fmt.Fprint(e.Stdout, m.Policy)
			})
		}},
		{"list", "", func(ctx context.Context, e *Env, args []string) int {
			c := e.newSecretsCmd("policy list", "[-o json]", 0, 0)
			return c.run(ctx, args, func() (string, string, any, error) { return "LIST", "sys/policies/acl", nil, nil }, func(r *vaultResponse) { printKeys(e, r) })
		}},
		{"delete", "NAME", func(ctx context.Context, e *Env, args []string) int {
			c := e.newSecretsCmd("policy delete", "NAME", 1, 1)
			return c.run(ctx, args, func() (string, string, any, error) {
				return "DELETE", "sys/policies/acl/" + url.PathEscape(c.args[0]), nil, nil
			}, nil)
		}},
		{"history", "[--limit N] [--before V]", func(ctx context.Context, e *Env, args []string) int {
			c := e.newSecretsCmd("policy history", "[--limit N] [--before VERSION] [-o json]", 0, 0)
			limit := c.fs.Int("limit", 20, "how many versions (1-1000)")
			before := c.fs.Uint64("before", 0, "only versions older than this `version`")
			return c.run(ctx, args, func() (string, string, any, error) {
				p, err := pagePath("sys/policies/history", *limit, *before, "policy version")
				return "GET", p, nil, err
			}, func(r *vaultResponse) {
				var m struct {
					Versions []struct {
						Version       uint64    `json:"version"`
						CreatedAt     time.Time `json:"created_at"`
						Actor         string    `json:"actor"`
						Action        string    `json:"action"`
						SourceVersion uint64    `json:"source_version"`
						Documents     int       `json:"documents"`
						Changes       []struct {
							Op   string `json:"op"`
							Name string `json:"name"`
						} `json:"changes"`
					} `json:"versions"`
				}
				json.Unmarshal(r.Data, &m)
				tw := newTable(e.Stdout)
				fmt.Fprintln(tw, "VERSION\tTIME\tACTION\tBY\tPOLICIES\tCHANGES")
				for _, v := range m.Versions {
					action := v.Action
					if v.SourceVersion > 0 {
						action += " to " + strconv.FormatUint(v.SourceVersion, 10)
					}
					var ch []string
					for _, c := range v.Changes {
						ch = append(ch, c.Op+" "+c.Name)
					}
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%s\n", v.Version, v.CreatedAt.Local().Format(time.RFC3339), action, v.Actor, v.Documents, strings.Join(ch, ", "))
				}
				tw.Flush()
			})
		}},
		{"rollback", "VERSION", func(ctx context.Context, e *Env, args []string) int {
			c := e.newSecretsCmd("policy rollback", "VERSION [-o json]", 1, 1)
			return c.run(ctx, args, func() (string, string, any, error) {
				v, err := strconv.ParseUint(c.args[0], 10, 63)
				if err != nil || v == 0 {
					return "", "", nil, errors.New("VERSION must be a policy version number (see \"moatless secrets policy history\")")
				}
				return "POST", "sys/policies/rollback", map[string]any{"version": v}, nil
			}, func(r *vaultResponse) { printSecretsPolicyChange(e, r) })
		}},
	}, args)
}

func printSecretsPolicyChange(e *Env, r *vaultResponse) {
	var res secrets.PolicyChangeResult
	json.Unmarshal(r.Data, &res)
	for _, c := range res.Changes {
		fmt.Fprintf(e.Stdout, "%s %s\n", c.Op, c.Name)
	}
	switch {
	case res.DryRun:
		fmt.Fprintf(e.Stdout, "dry run: nothing written (current version %d)\n", res.Version)
	case len(res.Changes) == 0:
		fmt.Fprintf(e.Stdout, "no change (version %d)\n", res.Version)
	default:
		fmt.Fprintf(e.Stdout, "secrets policy version %d\n", res.Version)
	}
}

func runSecretsStatus(ctx context.Context, e *Env, args []string) int {
	c := e.newSecretsCmd("status", "[-o json]", 0, 0)
	return c.run(ctx, args, func() (string, string, any, error) { return "GET", "sys/seal-status", nil, nil }, nil)
}

func runSecretsUnseal(ctx context.Context, e *Env, args []string) int {
	c := e.newSecretsCmd("unseal", "--key-file FILE | --passphrase-file FILE", 0, 0)
	keyFile := c.fs.String("key-file", "", "`file` with the 32-byte root key (raw, base64 or hex; - for stdin)")
	passFile := c.fs.String("passphrase-file", "", "`file` with the passphrase (- for stdin)")
	return c.run(ctx, args, func() (string, string, any, error) {
		switch {
		case (*keyFile == "") == (*passFile == ""):
			return "", "", nil, errors.New("give --key-file or --passphrase-file")
		case *keyFile != "":
			b, err := e.readInput(*keyFile, 1024)
			if err != nil {
				return "", "", nil, err
			}
			return "PUT", "sys/unseal", map[string]any{"key": strings.TrimSpace(string(b))}, nil
		}
		b, err := e.readInput(*passFile, 4096)
		if err != nil {
			return "", "", nil, err
		}
		return "PUT", "sys/unseal", map[string]any{"passphrase": strings.TrimRight(string(b), "\r\n")}, nil
	}, func(r *vaultResponse) { fmt.Fprintln(e.Stdout, "unsealed") })
}

func runSecretsRender(ctx context.Context, e *Env, args []string) int {
	fs := flag.NewFlagSet("secrets render", flag.ContinueOnError)
	file := fs.String("config", "", "renderer config `file` (YAML or JSON): server, workload_api or token_file, templates, svid")
	once := fs.Bool("once", false, "render once and exit (non-zero if anything failed)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "Usage: moatless secrets render --config FILE [--once]")
		fmt.Fprintln(fs.Output(), "\nRenders secrets and the workload's SVID into files from templates, renews leases, rewrites")
		fmt.Fprintln(fs.Output(), "the files before what they hold expires and runs a command or sends a signal on change.")
		fs.PrintDefaults()
	}
	if code, ok := e.parseFlags(fs, args); !ok {
		return code
	}
	if *file == "" {
		return e.errorf(ExitUsage, "secrets render: --config is required")
	}
	var cfg render.Config
	if err := config.DecodeFile(*file, &cfg); err != nil {
		return e.errorf(ExitUsage, "secrets render: %v", err)
	}
	log, err := dataplane.NewLogger(e.Stderr, "json", *logLevel)
	if err != nil {
		return e.errorf(ExitUsage, "secrets render: %v", err)
	}
	r, err := render.New(ctx, cfg, render.Options{Logger: log})
	if err != nil {
		return e.errorf(ExitUsage, "secrets render: %v", err)
	}
	defer r.Close()
	if *once {
		changed, err := r.Once(ctx)
		for _, c := range changed {
			fmt.Fprintf(e.Stdout, "rendered %s\n", c)
		}
		if err != nil {
			return e.errorf(ExitFailure, "secrets render: %v", err)
		}
		return ExitOK
	}
	if stopped := dataplane.LogLifecycle(ctx, log); stopped(r.Run(ctx)) {
		return ExitFailure
	}
	return ExitOK
}
