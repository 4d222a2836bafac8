package token

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/base64"
	"errors"
	"fmt"
	"image/png"
	"strings"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
)

// TOTP parameters: RFC 6238 defaults that every authenticator app
// supports (SHA-1, 6 digits, 30 s), with ±1 step of clock skew.
const (
	totpPeriod = 30
	totpSkew   = 1
	// RecoveryCodes is how many single-use recovery codes enrolment makes.
	RecoveryCodes = 10
)

func totpAAD(userID string) []byte { return []byte("moatless oauth totp v1 " + userID) }

// Enrollment is a new TOTP key for a user: what an authenticator app needs
// (URI, QR code) and the recovery codes, each shown once.
type Enrollment struct {
	Secret        string   `json:"secret"` // base32, for manual entry
	URI           string   `json:"otpauth_uri"`
	QRPNG         []byte   `json:"qr_png,omitempty"`
	RecoveryCodes []string `json:"recovery_codes,omitempty"`
}

// newTOTPKey makes a 160-bit TOTP key (RFC 4226 §4 recommends 160 bits)
// for the user and seals it.
func (s *Service) newTOTPKey(u *User) (*otp.Key, []byte, error) {
	key, err := totp.Generate(totp.GenerateOpts{
		Issuer: "Moatless (" + hostOf(s.cfg.Issuer) + ")", AccountName: u.Name,
		Period: totpPeriod, SecretSize: 20, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1, Rand: s.cfg.Rand,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("token: totp key: %w", err)
	}
	sealed, err := seal(s.cfg.KEK, []byte(key.Secret()), totpAAD(u.ID), s.cfg.Rand)
	if err != nil {
		return nil, nil, fmt.Errorf("token: seal totp key: %w", err)
	}
	return key, sealed, nil
}

func qrPNG(key *otp.Key) []byte {
	img, err := key.Image(256, 256)
	if err != nil {
		return nil
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return nil
	}
	return buf.Bytes()
}

func qrDataURI(png []byte) string {
	if png == nil {
		return ""
	}
	return "data:image/png;base64," + base64.StdEncoding.EncodeToString(png)
}

var (
	errTOTPInvalid = errors.New("token: wrong code")
	errTOTPReplay  = errors.New("token: code used before")
)

// matchTOTP returns the time step whose code equals code, within ±skew
// steps of now, comparing in constant time.
func matchTOTP(secret, code string, now time.Time) (int64, bool) {
	if len(code) != 6 {
		return 0, false
	}
	step := now.Unix() / totpPeriod
	found, matched := int64(0), false
	for d := int64(-totpSkew); d <= totpSkew; d++ {
		at := time.Unix((step+d)*totpPeriod, 0)
		want, err := totp.GenerateCodeCustom(secret, at, totp.ValidateOpts{Period: totpPeriod, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
		if err != nil {
			return 0, false
		}
		if subtle.ConstantTimeCompare([]byte(want), []byte(code)) == 1 && !matched {
			found, matched = step+d, true
		}
	}
	return found, matched
}

// checkTOTP verifies code for the user and records its step, so the same
// code (or an older one) is refused afterwards (RFC 6238 §5.2).
func (s *Service) checkTOTP(ctx context.Context, u *User, code string) error {
	if u.TOTPSecret == nil {
		return errTOTPInvalid
	}
	secret, err := unseal(s.cfg.KEK, u.TOTPSecret, totpAAD(u.ID))
	if err != nil {
		return fmt.Errorf("token: totp key of %s: %w", u.Name, err)
	}
	step, ok := matchTOTP(string(secret), strings.TrimSpace(code), s.now())
	if !ok {
		s.metrics.mfa.WithLabelValues("failed").Inc()
		return errTOTPInvalid
	}
	if err := s.cfg.Store.UseTOTPStep(ctx, u.ID, step); err != nil {
		if errors.Is(err, ErrConflict) {
			s.metrics.mfa.WithLabelValues("replayed").Inc()
			return errTOTPReplay
		}
		return err
	}
	s.metrics.mfa.WithLabelValues("verified").Inc()
	return nil
}

// newRecoveryCodes makes RecoveryCodes codes of 80 bits each (16 base32
// characters, grouped for reading) and their hashes.
func (s *Service) newRecoveryCodes() ([]string, [][]byte) {
	codes := make([]string, RecoveryCodes)
	hashes := make([][]byte, RecoveryCodes)
	enc := base32.StdEncoding.WithPadding(base32.NoPadding)
	for i := range codes {
		c := strings.ToLower(enc.EncodeToString(s.random(10)))
		codes[i] = c[:4] + "-" + c[4:8] + "-" + c[8:12] + "-" + c[12:]
		hashes[i] = s.recoveryHash(codes[i])
	}
	return codes, hashes
}

// recoveryHash normalizes a recovery code (case, dashes, spaces) and
// hashes it with a KEK-derived key, so a database dump alone does not
// allow offline guessing.
func (s *Service) recoveryHash(code string) []byte {
	norm := strings.Map(func(r rune) rune {
		switch {
		case r == '-' || r == ' ':
			return -1
		case r >= 'A' && r <= 'Z':
			return r + 'a' - 'A'
		}
		return r
	}, code)
	m := hmac.New(sha256.New, s.hashKey)
	m.Write([]byte("recovery:" + norm))
	return m.Sum(nil)
}

func hostOf(iss string) string {
	h := strings.TrimPrefix(iss, "https://")
	if i := strings.IndexByte(h, '/'); i >= 0 {
		h = h[:i]
	}
	return h
}
