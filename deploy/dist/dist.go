package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/deb"
	"github.com/goreleaser/nfpm/v2/files"
)

// Config says what Build makes.
type Config struct {
	// Repo is the repository root (holds go.mod of the binary).
	Repo string
	// Out is the output directory.
	Out string
	// Version is the release version without a leading v: 1.2.3,
	// 1.2.3-rc.1, 0.0.0-dev. It goes into the binary (moatless version)
	// and the package.
	Version string
	// Arches are Linux GOARCH values.
	Arches []string
	// MTime stamps the package files; the last commit's time would make
	// builds reproducible. Zero: now.
	MTime time.Time
}

var versionRE = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+([-+~][0-9A-Za-z.+~-]+)?$`)

// Build writes moatless_VERSION_linux_ARCH and
// moatless-sidecar_VERSION_linux_ARCH (static binaries: the one binary and
// the data plane alone), moatless_VERSION_ARCH.deb (both) and SHA256SUMS
// to c.Out and returns their paths. The binaries are built as "make build"
// builds them (CGO_ENABLED=0, -trimpath, -tags grpcnotrace; moatless-sidecar
// links no OPA because it does not import it), with -s -w
// and the version stamped.
func Build(ctx context.Context, c Config) ([]string, error) {
	if !versionRE.MatchString(c.Version) {
		return nil, fmt.Errorf("version %q is not a release version such as 1.2.3 or 1.2.3-rc.1", c.Version)
	}
	if len(c.Arches) == 0 {
		return nil, errors.New("no architecture")
	}
	if c.MTime.IsZero() {
		c.MTime = time.Now()
	}
	repo, err := filepath.Abs(c.Repo)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(c.Out, 0o755); err != nil {
		return nil, err
	}
	var out []string
	for _, arch := range c.Arches {
		var bins []string
		for _, cmd := range commands {
			bin := filepath.Join(c.Out, fmt.Sprintf("%s_%s_linux_%s", cmd, c.Version, arch))
			if err := buildBinary(ctx, repo, cmd, bin, arch, c.Version); err != nil {
				return nil, err
			}
			bins = append(bins, bin)
		}
		pkg := filepath.Join(c.Out, fmt.Sprintf("moatless_%s_%s.deb", c.Version, arch))
		if err := buildDeb(repo, bins, pkg, arch, c); err != nil {
			return nil, fmt.Errorf("%s: %w", pkg, err)
		}
		out = append(append(out, bins...), pkg)
	}
	sums := filepath.Join(c.Out, "SHA256SUMS")
	if err := writeSums(sums, out); err != nil {
		return nil, err
	}
	return append(out, sums), nil
}

// commands are the executables of a release, each built from ./cmd/NAME
// and installed as /usr/bin/NAME: the one binary, and the data plane
// alone for the sidecar that runs once per workload.
var commands = []string{"moatless", "moatless-sidecar"}

func buildBinary(ctx context.Context, repo, cmdName, dst, arch, version string) error {
	abs, err := filepath.Abs(dst)
	if err != nil {
		return err
	}
	// moatless-sidecar leaves OPA out by what it imports, not by a tag
	// (docs/sidecar.md#which-executable).
	cmd := exec.CommandContext(ctx, "go", "build", "-tags", "grpcnotrace", "-trimpath",
		"-ldflags", "-s -w -X github.com/moatless/moatless/internal/cli/dataplane.Version=v"+version,
		"-o", abs, "./cmd/"+cmdName)
	cmd.Dir = repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s linux/%s: %v\n%s", cmdName, arch, err, b)
	}
	return nil
}

// buildDeb packages bins (commands, in order): /usr/bin/moatless and
// /usr/bin/moatless-sidecar, the server and agent units and the
// sidecar's template (moatless-sidecar@.service), /etc/moatless/sidecar,
// /etc/moatless/server.yaml (a conffile the upgrade keeps), the docs, and
// maintainer scripts that create the moatless system user and
// /var/lib/moatless (0700).
func buildDeb(repo string, bins []string, dst, arch string, c Config) error {
	deploy := filepath.Join(repo, "deploy")
	tmp, err := os.MkdirTemp("", "moatless-dist-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	mode := func(m os.FileMode) *files.ContentFileInfo {
		return &files.ContentFileInfo{Mode: m, Owner: "root", Group: "root", MTime: c.MTime}
	}
	contents := files.Contents{
		{Source: filepath.Join(deploy, "debian", "moatless-server.service"), Destination: "/lib/systemd/system/moatless-server.service", FileInfo: mode(0o644)},
		{Source: filepath.Join(deploy, "debian", "server.yaml"), Destination: "/etc/moatless/server.yaml", Type: files.TypeConfigNoReplace, FileInfo: mode(0o644)},
		{Destination: "/etc/moatless/sidecar", Type: files.TypeDir, FileInfo: mode(0o755)},
	}
	// The units of deploy/systemd, for the package's /usr/bin.
	for _, name := range []string{"moatless-agent.service", "moatless-sidecar@.service"} {
		unit, err := packagedUnit(filepath.Join(deploy, "systemd", name))
		if err != nil {
			return err
		}
		p := filepath.Join(tmp, name)
		if err := os.WriteFile(p, unit, 0o644); err != nil {
			return err
		}
		contents = append(contents, &files.Content{Source: p, Destination: "/lib/systemd/system/" + name, FileInfo: mode(0o644)})
	}
	for i, bin := range bins {
		contents = append(contents, &files.Content{Source: bin, Destination: "/usr/bin/" + commands[i], FileInfo: mode(0o755)})
	}
	for _, doc := range []string{"server.md", "agent.md", "sidecar.md", "cli.md", "policy.md"} {
		contents = append(contents, &files.Content{Source: filepath.Join(repo, "docs", doc), Destination: "/usr/share/doc/moatless/" + doc, FileInfo: mode(0o644)})
	}
	info := &nfpm.Info{
		Name:        "moatless",
		Arch:        arch,
		Platform:    "linux",
		Version:     c.Version,
		Section:     "net",
		Priority:    "optional",
		Maintainer:  "Moatless maintainers <maintainers@moatless.invalid>",
		Description: "Zero trust for microservices in one binary\nSPIFFE identities, mTLS sidecars enforcing Istio-compatible policies, an OAuth/OIDC\ntoken service, revocation pushed in milliseconds and a hash-chained audit log.",
		Homepage:    "https://github.com/moatless/moatless",
		License:     "Apache-2.0",
		MTime:       c.MTime,
		Overridables: nfpm.Overridables{
			Depends:  []string{"adduser | passwd"},
			Contents: contents,
			Scripts: nfpm.Scripts{
				PostInstall: filepath.Join(deploy, "debian", "postinst.sh"),
				PreRemove:   filepath.Join(deploy, "debian", "prerm.sh"),
				PostRemove:  filepath.Join(deploy, "debian", "postrm.sh"),
			},
		},
	}
	info = nfpm.WithDefaults(info)
	if err := info.Validate(); err != nil {
		return err
	}
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	if err := deb.Default.Package(info, f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// packagedUnit is a unit of deploy/systemd (written for a binary installed
// by hand in /usr/local/bin) with the package's /usr/bin/moatless or
// /usr/bin/moatless-sidecar.
func packagedUnit(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := string(b)
	for _, cmd := range commands {
		out = strings.ReplaceAll(out, "/usr/local/bin/"+cmd+" ", "/usr/bin/"+cmd+" ")
	}
	if out == string(b) || strings.Contains(out, "/usr/local/bin/") {
		return nil, fmt.Errorf("%s: want /usr/local/bin/moatless or /usr/local/bin/moatless-sidecar, and nothing else of /usr/local/bin, to replace", path)
	}
	return []byte(out), nil
}

// writeSums writes "HEX  NAME" lines, sha256sum's format: "sha256sum -c
// SHA256SUMS" in the output directory checks them.
func writeSums(dst string, paths []string) error {
	var b strings.Builder
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		h := sha256.New()
		_, err = io.Copy(h, bufio.NewReader(f))
		f.Close()
		if err != nil {
			return err
		}
		fmt.Fprintf(&b, "%s  %s\n", hex.EncodeToString(h.Sum(nil)), filepath.Base(p))
	}
	return os.WriteFile(dst, []byte(b.String()), 0o644)
}

func splitComma(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
