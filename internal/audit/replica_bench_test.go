package audit_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/moatless/moatless/internal/audit"
	"github.com/moatless/moatless/internal/store"
	"github.com/moatless/moatless/internal/store/storetest"
)

// BenchmarkAppendAcrossReplicas: the cost of one audit chain shared by
// several server replicas on PostgreSQL. Each replica (its own store
// handle and sink, group-committing its own callers) appends under the
// chain head's row lock, so replicas take turns; 16 concurrent callers
// spread over the replicas. ns/op is per event.
//
//	go test -run '^$' -bench AppendAcrossReplicas -benchtime 2000x ./internal/audit/
func BenchmarkAppendAcrossReplicas(b *testing.B) {
	for _, replicas := range []int{1, 3} {
		b.Run(fmt.Sprintf("replicas_%d", replicas), func(b *testing.B) {
			dsn := storetest.PostgresDSN(b)
			var sinks []*audit.StoreSink
			for range replicas {
				db, err := store.Open(context.Background(), dsn)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { db.Close() })
				sinks = append(sinks, audit.NewStoreSink(db))
			}
			var next atomic.Int64
			b.SetParallelism(8) // 16 callers on 2 CPUs
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				s := sinks[int(next.Add(1))%replicas]
				for pb.Next() {
					if err := s.Append(context.Background(), audit.Event{Kind: audit.KindEntryCreate, Actor: "bench", Subject: "e", Outcome: audit.Success}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			if _, err := audit.Verify(context.Background(), sinksDB(b, dsn), audit.VerifyOptions{}); err != nil {
				b.Fatal(err)
			}
		})
	}
}

func sinksDB(b *testing.B, dsn string) *store.DB {
	db, err := store.Open(context.Background(), dsn)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { db.Close() })
	return db
}
