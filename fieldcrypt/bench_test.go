package fieldcrypt_test

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/moatless/moatless/fieldcrypt"
	"github.com/moatless/moatless/internal/secrets/transit"
)

// localCipher is a transit key in process: the cost of field encryption
// without the network.
type localCipher struct{ k *transit.Key }

func (c localCipher) Encrypt(_ context.Context, pt, ctx []byte) (string, error) {
	return c.k.Encrypt(pt, ctx, 0)
}
func (c localCipher) Decrypt(_ context.Context, ct string, ctx []byte) ([]byte, error) {
	pt, _, err := c.k.Decrypt(ct, ctx)
	return pt, err
}

// tenFields is a customer record with ten personal fields to encrypt and
// some that stay readable.
const tenFields = `{"id": 1042, "created": "2026-11-30T10:00:00Z", "status": "active",
 "name": "Ada Lovelace", "email": "ada@example.com", "phone": "+44 20 7946 0958", "ssn": "123-45-6789",
 "credit_card": "4111111111111111", "iban": "GB82WEST12345698765432", "dob": "1815-12-10",
 "address": {"street": "12 St James's Square", "city": "London", "postcode": "SW1Y 4JH"},
 "passport": "925076473", "tags": ["vip"]}`

// cpuTime is the process's user + system CPU time: on a shared machine
// wall time per op mostly measures waiting for a core.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

var tenFieldNames = []string{"name", "email", "phone", "ssn", "credit_card", "iban", "dob", "address.street", "address.postcode", "passport"}

func BenchmarkEncrypt10Fields(b *testing.B) {
	k, _ := transit.New("pii", transit.AES256GCM96, false, false, time.Now())
	e := fieldcrypt.Encrypter{Cipher: localCipher{k}, Fields: tenFieldNames}
	b.ReportAllocs()
	cpu := cpuTime()
	for b.Loop() {
		if _, err := e.Encrypt(context.Background(), []byte(tenFields)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
}

func BenchmarkDecrypt10Fields(b *testing.B) {
	k, _ := transit.New("pii", transit.AES256GCM96, false, false, time.Now())
	e := fieldcrypt.Encrypter{Cipher: localCipher{k}, Fields: tenFieldNames}
	enc, _ := e.Encrypt(context.Background(), []byte(tenFields))
	b.ReportAllocs()
	cpu := cpuTime()
	for b.Loop() {
		if _, err := e.Decrypt(context.Background(), enc); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
}
