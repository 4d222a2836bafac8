package e2e

import (
	"crypto/tls"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moatless/moatless/internal/tlsconf"
)

// probeSuites lists what the TLS listener at addr accepts: each TLS 1.2
// suite crypto/tls knows (secure and insecure) is offered alone, and TLS
// 1.3 once (its suites cannot be chosen; the one negotiated is listed).
// cert is presented when the listener asks for one.
func probeSuites(t *testing.T, addr string, cert *tls.Certificate) (tls12 []string, tls13 string) {
	t.Helper()
	dial := func(conf *tls.Config) (*tls.Conn, error) {
		conf.InsecureSkipVerify = true // negotiation is tested here, not the certificate
		if cert != nil {
			conf.Certificates = []tls.Certificate{*cert}
		}
		return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, conf)
	}
	for _, cs := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
		if !slices.Contains(cs.SupportedVersions, tls.VersionTLS12) {
			continue
		}
		c, err := dial(&tls.Config{MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{cs.ID}})
		if err != nil {
			continue
		}
		if got := c.ConnectionState().CipherSuite; got == cs.ID {
			tls12 = append(tls12, cs.Name)
		}
		c.Close()
	}
	if c, err := dial(&tls.Config{MinVersion: tls.VersionTLS13}); err == nil {
		tls13 = tls.CipherSuiteName(c.ConnectionState().CipherSuite)
		c.Close()
	}
	return tls12, tls13
}

// sslscanAccepted runs sslscan (Debian's, which .ci/run installs) against
// addr, presenting the client certificate in certFile/keyFile when given
// (a listener that requires one would fail every TLS 1.2 handshake
// without it), and returns the ciphers it reports accepted; skipped=true
// when it is not installed outside CI.
func sslscanAccepted(t *testing.T, addr, certFile, keyFile string) (ciphers []string, skipped bool) {
	t.Helper()
	path, err := exec.LookPath("sslscan")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("sslscan is not installed (apt-get install sslscan; .ci/run does)")
		}
		return nil, true
	}
	args := []string{"--no-colour", "--no-heartbleed", "--no-renegotiation", "--no-compression", "--no-fallback", "--no-groups"}
	if certFile != "" {
		args = append(args, "--certs="+certFile, "--pk="+keyFile)
	}
	out, err := exec.Command(path, append(args, addr)...).CombinedOutput()
	if err != nil {
		t.Fatalf("sslscan %s: %v\n%s", addr, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 && (f[0] == "Accepted" || f[0] == "Preferred") {
			ciphers = append(ciphers, f[1]+" "+f[4])
		}
	}
	if len(ciphers) == 0 {
		t.Fatalf("sslscan reported no accepted cipher at %s:\n%s", addr, out)
	}
	return ciphers, false
}

// TestListenersOfferAEADOnly lists what each TLS listener accepts — the
// server (one listener for the admin, agent, token, secrets and OPA APIs),
// a sidecar's inbound listener, "moatless authz" over TCP and the
// gateway's public listener — and
// requires AEAD suites only: no CBC with SHA-1 (Go's defaults include
// ECDHE-ECDSA-AES128-SHA and -AES256-SHA under TLS 1.2). The sidecar's and
// the agent's admin and health listeners are plaintext on loopback and
// serve nothing secret; the agent's Workload API is a unix socket.
func TestListenersOfferAEADOnly(t *testing.T) {
	p := startPlane(t)
	m := startSidecarMesh(t, sidecarEchoApp(t))
	clientSVID := m.pki.ca.SVID(t, scFrontendID, 0)
	clientFiles := m.pki.ca.WriteFiles(t, t.TempDir(), "client", clientSVID)
	client := clientSVID.X509SVID()
	clientCert := &tls.Certificate{PrivateKey: client.PrivateKey, Leaf: client.Certificates[0]}
	for _, c := range client.Certificates {
		clientCert.Certificate = append(clientCert.Certificate, c.Raw)
	}

	authzAddr := freeAddr(t)
	af := m.pki.ca.WriteFiles(t, t.TempDir(), "authz", m.pki.ca.SVID(t, "spiffe://e2e.test/authz", 0))
	pol := writeTestFile(t, t.TempDir(), "p.yaml", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n")
	authz := start(t, "authz", nil, "authz", "-f", pol, "--listen", authzAddr, "--tls-cert", af.Cert, "--tls-key", af.Key, "--client-ca", af.Bundle, "--admin", "off")
	waitFor(t, 30*time.Second, "authz to listen", func() bool {
		if authz.exited() {
			t.Fatalf("authz exited:\n%s", authz.out.String())
		}
		c, err := net.DialTimeout("tcp", authzAddr, time.Second)
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	// Every certificate here is ECDSA P-256, so the TLS 1.2 suites are the
	// ECDHE-ECDSA ones of tlsconf.CipherSuites.
	ecdsaAEAD := []string{
		"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
		"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
		"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
	}
	gw, _, _ := startGatewayMesh(t, "")

	listeners := []struct {
		name, addr string
		cert       *tls.Certificate // presented when asked for (it is required by mutual TLS listeners)
		want12     []string         // the TLS 1.2 suites accepted, sorted; nil for TLS 1.3 only
	}{
		{"server", p.addr, nil, nil},
		{"sidecar_inbound", m.inbound, clientCert, nil},
		{"ext_authz_tcp", authzAddr, clientCert, ecdsaAEAD},
		{"gateway_public", gw.addr, nil, ecdsaAEAD},
	}
	for _, l := range listeners {
		t.Run(l.name, func(t *testing.T) {
			tls12, tls13 := probeSuites(t, l.addr, l.cert)
			t.Logf("%s (%s) accepts TLS 1.2: %v; TLS 1.3: %s", l.name, l.addr, tls12, tls13)
			if tls13 == "" {
				t.Error("TLS 1.3 refused")
			}
			slices.Sort(tls12)
			if !slices.Equal(tls12, l.want12) {
				t.Errorf("TLS 1.2 suites accepted:\n got %v\nwant %v", tls12, l.want12)
			}
			for _, name := range append(tls12, tls13) {
				var id uint16
				for _, cs := range append(tls.CipherSuites(), tls.InsecureCipherSuites()...) {
					if cs.Name == name {
						id = cs.ID
					}
				}
				if !tlsconf.AEAD(id) {
					t.Errorf("accepts %s, not an AEAD suite", name)
				}
			}
			certFile, keyFile := "", ""
			if l.cert != nil {
				certFile, keyFile = clientFiles.Cert, clientFiles.Key
			}
			ciphers, skipped := sslscanAccepted(t, l.addr, certFile, keyFile)
			if skipped {
				t.Log("sslscan not installed; crypto/tls probe only")
				return
			}
			t.Logf("sslscan: %v", ciphers)
			for _, c := range ciphers {
				if name := strings.Fields(c)[1]; !strings.Contains(name, "GCM") && !strings.Contains(name, "CHACHA20") {
					t.Errorf("sslscan: %s accepts %s", l.name, c)
				}
			}
		})
	}
}
