package audit

// Retention: old records leave the store for segment files that keep the
// hash chain, so the store does not grow without bound and the whole log
// still verifies, files and store together, from record 1.
//
// A segment file is NDJSON: one header line, then one line per record in
// sequence order, each with the fields the hash covers exactly as stored
// (details as the canonical JSON string):
//
//	{"moatless_audit_segment":1,"first_seq":1,"last_seq":1000,"prev_hash":"","records":1000}
//	{"seq":1,"at":1764...,"kind":"server.start","actor":"...","subject":"","outcome":"success","details":"{...}","prev_hash":"","hash":"9f2c..."}
//
// Files are named audit-<first>-<last>.ndjson with 20-digit numbers, so
// they sort in chain order.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/moatless/moatless/internal/store"
)

// KindAuditArchive records that a segment left the store.
const KindAuditArchive = "audit.archive"

// segmentFormat is the version in a segment's header.
const segmentFormat = 1

// MaxSegmentLine bounds one line of a segment file when reading it.
const MaxSegmentLine = 1 << 20

type segmentHeader struct {
	Format   int    `json:"moatless_audit_segment"`
	FirstSeq uint64 `json:"first_seq"`
	LastSeq  uint64 `json:"last_seq"`
	PrevHash string `json:"prev_hash"`
	Records  uint64 `json:"records"`
}

type segmentLine struct {
	Seq      uint64 `json:"seq"`
	At       int64  `json:"at"`
	Kind     string `json:"kind"`
	Actor    string `json:"actor"`
	Subject  string `json:"subject"`
	Outcome  string `json:"outcome"`
	Details  string `json:"details"`
	PrevHash string `json:"prev_hash"`
	Hash     string `json:"hash"`
}

// SegmentName is the file name of the segment holding first..last.
func SegmentName(first, last uint64) string {
	return fmt.Sprintf("audit-%020d-%020d.ndjson", first, last)
}

// ArchiveOptions tune Archive.
type ArchiveOptions struct {
	// Dir receives the segment files (created 0700 if missing). Required.
	Dir string
	// Before: only records older than this are archived. Required.
	Before time.Time
	// MaxRecords bounds one segment; 100,000 when 0. Archive writes
	// segments until no old record is left.
	MaxRecords int
	// Actor is recorded as who archived (the server's SPIFFE ID, or
	// "cli" for moatless audit archive).
	Actor string
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Archive moves the records older than o.Before out of the store into
// segment files in o.Dir, oldest first, and returns the segments written.
// For each segment it writes the file (fsynced, renamed into place), reads
// it back and verifies its chain from where the store's log starts, then in
// one transaction checks under the chain head's lock that the stored
// records are still the ones written, records the segment, deletes them
// and appends an audit.archive record naming the file and its SHA-256. A
// failure before that commit leaves the store as it was (a file may be
// left behind; the next run rewrites it). Several archivers (replicas) may
// run at once: one commits, the others get store.ErrArchiveMoved for that
// segment and stop.
func Archive(ctx context.Context, db *store.DB, sink *StoreSink, o ArchiveOptions) ([]store.AuditSegment, error) {
	if o.Dir == "" || o.Before.IsZero() {
		return nil, errors.New("audit: archive: a directory and a cutoff time are required")
	}
	if o.MaxRecords <= 0 {
		o.MaxRecords = 100_000
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if err := os.MkdirAll(o.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit: archive: %w", err)
	}
	var done []store.AuditSegment
	for {
		base, baseHash, err := db.AuditBase(ctx)
		if err != nil {
			return done, fmt.Errorf("audit: archive: %w", err)
		}
		rows, err := db.AuditRowsBefore(ctx, base, o.Before, o.MaxRecords)
		if err != nil {
			return done, fmt.Errorf("audit: archive: %w", err)
		}
		if len(rows) == 0 {
			return done, nil
		}
		if uint64(rows[0].Seq) != base+1 {
			// Another replica archived, and deleted, records between
			// reading the base and the rows: start again from its head.
			// An unmoved base with a gap after it is a broken chain.
			if b2, _, err := db.AuditBase(ctx); err == nil && b2 != base {
				continue
			}
			return done, fmt.Errorf("audit: archive: record %d follows the archived head %d: the chain has a gap, nothing archived", rows[0].Seq, base)
		}
		seg, hashes, err := writeSegment(o.Dir, base, baseHash, rows)
		if err != nil {
			return done, err
		}
		seg.ArchivedBy = o.Actor
		now := o.Now()
		err = db.Tx(ctx, func(tx *sql.Tx) error {
			if err := db.CommitAuditSegment(ctx, tx, seg, hashes, now); err != nil {
				return err
			}
			return sink.AppendTx(ctx, tx, Event{Kind: KindAuditArchive, Actor: o.Actor, Subject: seg.File, Outcome: Success, Time: now,
				Details: map[string]string{"first_seq": fmt.Sprint(seg.FirstSeq), "last_seq": fmt.Sprint(seg.LastSeq),
					"last_hash": hex.EncodeToString(seg.LastHash), "file_sha256": seg.FileSHA256}})
		})
		if err != nil {
			// Not committed (another replica archived these first, or the
			// store failed): the file is no segment of the chain.
			os.Remove(filepath.Join(o.Dir, seg.File))
			return done, fmt.Errorf("audit: archive records %d-%d: %w", seg.FirstSeq, seg.LastSeq, err)
		}
		done = append(done, seg)
	}
}

// writeSegment writes rows (which must continue the chain at base,
// baseHash) to a new segment file and verifies what was written by reading
// it back.
func writeSegment(dir string, base uint64, baseHash []byte, rows []store.AuditRow) (store.AuditSegment, [][]byte, error) {
	first, last := uint64(rows[0].Seq), uint64(rows[len(rows)-1].Seq)
	name := SegmentName(first, last)
	var buf bytes.Buffer
	enc := segmentEncoder(&buf)
	if err := enc.Encode(segmentHeader{Format: segmentFormat, FirstSeq: first, LastSeq: last,
		PrevHash: hex.EncodeToString(baseHash), Records: uint64(len(rows))}); err != nil {
		return store.AuditSegment{}, nil, err
	}
	hashes := make([][]byte, len(rows))
	for i, r := range rows {
		hashes[i] = r.Hash
		if err := enc.Encode(segmentLine{Seq: uint64(r.Seq), At: r.At, Kind: r.Kind, Actor: r.Actor, Subject: r.Subject, Outcome: r.Outcome,
			Details: r.Details, PrevHash: hex.EncodeToString(r.PrevHash), Hash: hex.EncodeToString(r.Hash)}); err != nil {
			return store.AuditSegment{}, nil, err
		}
	}
	path := filepath.Join(dir, name)
	if err := writeFileSynced(path, buf.Bytes()); err != nil {
		return store.AuditSegment{}, nil, fmt.Errorf("audit: archive: write %s: %w", path, err)
	}
	// What is deleted from the store must be what is on disk and must
	// verify: read the file back rather than trusting the buffer.
	res, err := VerifySegmentFile(path, Head{Seq: base, Hash: baseHash})
	if err != nil {
		return store.AuditSegment{}, nil, fmt.Errorf("audit: archive: the segment written does not verify, nothing deleted: %w", err)
	}
	if res.Head.Seq != last || !bytes.Equal(res.Head.Hash, rows[len(rows)-1].Hash) {
		return store.AuditSegment{}, nil, fmt.Errorf("audit: archive: the segment written ends at %s, not at record %d; nothing deleted", res.Head, last)
	}
	sum := sha256.Sum256(buf.Bytes())
	return store.AuditSegment{FirstSeq: first, LastSeq: last, LastHash: rows[len(rows)-1].Hash, Records: uint64(len(rows)),
		File: name, FileSHA256: hex.EncodeToString(sum[:])}, hashes, nil
}

func writeFileSynced(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// VerifySegmentFile checks one segment file: a well-formed header, every
// record's hash over its content, every link, contiguous sequence numbers
// from the header's first to its last, and a start at prev (the head the
// segment continues: the end of the previous segment, or 0 and no hash for
// the first). It returns the records checked and the head the segment
// ends at; a broken file is a *VerifyError naming the record.
func VerifySegmentFile(path string, prev Head) (VerifyResult, error) {
	f, err := os.Open(path)
	if err != nil {
		return VerifyResult{}, fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	return verifySegment(f, filepath.Base(path), prev, nil)
}

// verifySegment checks one segment read from r (see VerifySegmentFile);
// expect, when set, is a head that must be in the chain with its hash if
// the segment holds its record.
func verifySegment(r io.Reader, name string, prev Head, expect *Head) (VerifyResult, error) {
	var res VerifyResult
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), MaxSegmentLine)
	bad := func(seq uint64, format string, args ...any) error {
		return &VerifyError{Seq: int64(seq), Reason: name + ": " + fmt.Sprintf(format, args...)}
	}
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return res, fmt.Errorf("audit: read %s: %w", name, err)
		}
		return res, bad(prev.Seq+1, "empty file: no segment header")
	}
	var h segmentHeader
	if err := strictJSON(sc.Bytes(), &h); err != nil || h.Format != segmentFormat {
		return res, bad(prev.Seq+1, "not a moatless audit segment (bad header)")
	}
	if h.FirstSeq != prev.Seq+1 || h.PrevHash != hex.EncodeToString(prev.Hash) {
		return res, bad(prev.Seq+1, "starts at record %d after %q, but the chain is at %s (a segment is missing or out of order)", h.FirstSeq, h.PrevHash, prev)
	}
	if h.LastSeq < h.FirstSeq || h.Records != h.LastSeq-h.FirstSeq+1 {
		return res, bad(h.FirstSeq, "header claims records %d-%d but %d records", h.FirstSeq, h.LastSeq, h.Records)
	}
	last, prevHash := prev.Seq, prev.Hash
	for sc.Scan() {
		var l segmentLine
		want := last + 1
		if err := strictJSON(sc.Bytes(), &l); err != nil {
			return res, bad(want, "malformed line: %v", err)
		}
		ph, err1 := hex.DecodeString(l.PrevHash)
		hh, err2 := hex.DecodeString(l.Hash)
		switch {
		case err1 != nil || err2 != nil:
			return res, bad(want, "hashes are not hex")
		case l.Seq != want:
			return res, bad(want, "missing: the next record in the file is %d", l.Seq)
		case !bytes.Equal(nilIfEmpty(ph), nilIfEmpty(prevHash)):
			return res, bad(l.Seq, "its previous-hash does not match the record before it")
		case !bytes.Equal(Hash(l.Seq, l.At, l.Kind, l.Actor, l.Subject, l.Outcome, l.Details, nilIfEmpty(ph)), hh):
			return res, bad(l.Seq, "its content does not match its hash (the record was edited)")
		}
		var details map[string]string
		if err := json.Unmarshal([]byte(l.Details), &details); err != nil {
			return res, bad(l.Seq, "details are not a JSON object of strings")
		}
		if expect != nil && expect.Seq == l.Seq && !bytes.Equal(expect.Hash, hh) {
			return res, bad(l.Seq, "its hash differs from the expected head (the chain was rewritten from this record or before)")
		}
		last, prevHash = l.Seq, hh
		res.Records++
	}
	if err := sc.Err(); err != nil {
		return res, fmt.Errorf("audit: read %s: %w", name, err)
	}
	if last != h.LastSeq {
		return res, bad(last+1, "the file ends at record %d, the header says %d (truncated)", last, h.LastSeq)
	}
	res.Head = Head{Seq: last, Hash: prevHash}
	return res, nil
}

// strictJSON decodes one segment line into v and accepts it only if it is
// exactly what the archiver writes for v (segmentEncoder): no unknown
// member, and no repeated or differently cased one, extra space or other
// escape either. encoding/json matches member names case-insensitively
// and keeps the last of a repeated one, so a line such as
// {"kind":"entry.delete","Kind":"entry.create",...} would verify against
// the hash of entry.create while jq or a SIEM reading the file shows
// entry.delete: the record verified must be the only record readable.
func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	var canon bytes.Buffer
	if err := segmentEncoder(&canon).Encode(v); err != nil {
		return err
	}
	if !bytes.Equal(bytes.TrimSuffix(canon.Bytes(), []byte("\n")), b) {
		return errors.New("not in the archiver's encoding (a repeated, differently cased or reformatted member)")
	}
	return nil
}

// segmentEncoder is the one encoding of segment lines, written by the
// archiver and required by the verifier.
func segmentEncoder(w io.Writer) *json.Encoder {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc
}

// VerifyArchive checks the segment files in dir as one chain from record 1.
// With segs (the store's AuditSegments), exactly the files the store
// recorded are checked, in order, each against the SHA-256 recorded when it
// was archived; a file the store never recorded (an archive run that failed
// or is still committing) is not part of the chain and is left out. With
// segs nil (no store at hand), every audit-*.ndjson file counts, sorted by
// name. expect, when set, is checked if its record is archived. It returns
// the records checked and the head the files end at, where the store's log
// must continue (pass it to Verify as VerifyOptions.Archived, or use
// VerifyAll, which also copes with an archive committed meanwhile).
func VerifyArchive(dir string, segs []store.AuditSegment, expect *Head) (VerifyResult, error) {
	type file struct{ name, sha string }
	var files []file
	if segs != nil {
		ordered := append([]store.AuditSegment(nil), segs...)
		sort.Slice(ordered, func(i, j int) bool { return ordered[i].FirstSeq < ordered[j].FirstSeq })
		for _, g := range ordered {
			files = append(files, file{g.File, g.FileSHA256})
		}
	} else {
		names, err := filepath.Glob(filepath.Join(dir, "audit-*.ndjson"))
		if err != nil {
			return VerifyResult{}, fmt.Errorf("audit: %w", err)
		}
		sort.Strings(names)
		for _, n := range names {
			files = append(files, file{name: filepath.Base(n)})
		}
	}
	var res VerifyResult
	for _, f := range files {
		if strings.ContainsAny(f.name, `/\`) {
			return res, &VerifyError{Seq: int64(res.Head.Seq) + 1, Reason: fmt.Sprintf("the store names segment file %q, which is not a plain file name", f.name)}
		}
		b, err := os.ReadFile(filepath.Join(dir, f.name))
		if errors.Is(err, os.ErrNotExist) {
			return res, &VerifyError{Seq: int64(res.Head.Seq) + 1, Reason: fmt.Sprintf("archived segment missing from %s: %s", dir, f.name)}
		}
		if err != nil {
			return res, fmt.Errorf("audit: %w", err)
		}
		if f.sha != "" {
			sum := sha256.Sum256(b)
			if hex.EncodeToString(sum[:]) != f.sha {
				return res, &VerifyError{Seq: int64(res.Head.Seq) + 1, Reason: f.name + ": its SHA-256 differs from the one the store recorded when it was archived"}
			}
		}
		r, err := verifySegment(bytes.NewReader(b), f.name, res.Head, expect)
		res.Records += r.Records
		if err != nil {
			return res, err
		}
		res.Head = r.Head
	}
	return res, nil
}

// VerifyAll verifies the archived segments in dir (VerifyArchive, against
// the store's record of them) and the store's log after them as one chain
// from record 1. An archive run that commits while it reads moves the
// store's start past what it read; it then reads again (a few times). It
// returns the archive's result and the store's; inArchive says that an
// error is about the segment files rather than the store's log.
func VerifyAll(ctx context.Context, db *store.DB, dir string, o VerifyOptions) (arch, res VerifyResult, inArchive bool, err error) {
	for attempt := 0; ; attempt++ {
		segs, err := db.AuditSegments(ctx)
		if err != nil {
			return arch, res, false, fmt.Errorf("audit: %w", err)
		}
		if segs == nil {
			segs = []store.AuditSegment{}
		}
		if arch, err = VerifyArchive(dir, segs, o.ExpectHead); err != nil {
			return arch, res, true, err
		}
		o.Archived = &arch.Head
		res, err = Verify(ctx, db, o)
		if err == nil || attempt == 3 {
			return arch, res, false, err
		}
		// Did a segment commit after the list was read (the store now
		// starts later)? Then read again; otherwise the error stands.
		if base, _, berr := db.AuditBase(ctx); berr != nil || base <= arch.Head.Seq {
			return arch, res, false, err
		}
	}
}
