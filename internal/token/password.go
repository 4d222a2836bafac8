package token

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"time"

	"golang.org/x/crypto/argon2"
)

// Argon2Params are argon2id cost parameters.
type Argon2Params struct {
	Memory  uint32 // KiB
	Time    uint32
	Threads uint8
}

// OWASPArgon2 is the OWASP Password Storage Cheat Sheet's first argon2id
// configuration: 19 MiB, 2 iterations, 1 lane.
var OWASPArgon2 = Argon2Params{Memory: 19 * 1024, Time: 2, Threads: 1}

// Password limits. The upper bound keeps hashing cost bounded.
const (
	MinPasswordLen = 8
	MaxPasswordLen = 1024
)

// hashPassword returns the PHC string of an argon2id hash with a 16-byte
// random salt and a 32-byte key.
func hashPassword(rnd io.Reader, pw string, p Argon2Params) (string, error) {
	salt := make([]byte, 16)
	if _, err := io.ReadFull(rnd, salt); err != nil {
		return "", fmt.Errorf("token: password salt: %w", err)
	}
	key := argon2.IDKey([]byte(pw), salt, p.Time, p.Memory, p.Threads, 32)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.Memory, p.Time, p.Threads,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key)), nil
}

var errBadHash = errors.New("token: malformed password hash")

// checkPassword compares pw with a PHC argon2id hash in constant time.
// Parameters come from the hash, so raising the cost later keeps old
// hashes valid; absurd parameters are refused rather than computed.
func checkPassword(encoded, pw string) (bool, error) {
	parts := strings.Split(encoded, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false, errBadHash
	}
	var v int
	if _, err := fmt.Sscanf(parts[2], "v=%d", &v); err != nil || v != argon2.Version {
		return false, errBadHash
	}
	var p Argon2Params
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &p.Memory, &p.Time, &p.Threads); err != nil {
		return false, errBadHash
	}
	if p.Memory < 8 || p.Memory > 1<<20 || p.Time < 1 || p.Time > 16 || p.Threads < 1 {
		return false, errBadHash
	}
	salt, err := base64.RawStdEncoding.DecodeString(parts[4])
	if err != nil || len(salt) < 8 {
		return false, errBadHash
	}
	want, err := base64.RawStdEncoding.DecodeString(parts[5])
	if err != nil || len(want) < 16 || len(want) > 64 {
		return false, errBadHash
	}
	got := argon2.IDKey([]byte(pw), salt, p.Time, p.Memory, p.Threads, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

// checkNewPassword enforces the length policy (NIST SP 800-63B: length
// over composition rules).
func checkNewPassword(pw string) error {
	if len(pw) < MinPasswordLen || len(pw) > MaxPasswordLen {
		return fmt.Errorf("password must be %d to %d bytes", MinPasswordLen, MaxPasswordLen)
	}
	return nil
}

// Each argon2id computation takes 19 MiB; without a bound, a flood of
// login attempts would take the server's memory with it. At most
// maxHashers run at once; a request waits at most hashWait for its turn
// and is otherwise answered "busy" (throttling already limits each user
// and address; this bounds the total).
var maxHashers = max(2, 2*runtime.GOMAXPROCS(0))

const hashWait = 5 * time.Second

func (s *Service) acquireHash(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, hashWait)
	defer cancel()
	select {
	case s.hashSem <- struct{}{}:
		return nil
	case <-ctx.Done():
		s.metrics.logins.WithLabelValues("busy").Inc()
		return ctx.Err()
	}
}

func (s *Service) releaseHash() { <-s.hashSem }
