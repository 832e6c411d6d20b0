package inbox

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/internal/db"
	"github.com/postbox-dev/postbox/internal/headers"
)

// A claim reads, it does not write: postbox.claim_batch takes order
// partitions no other consumer works with session-level advisory locks
// (no write, no transaction) and returns up to a batch of their
// deliveries (a partition's due parked deliveries first, then its stream
// from the cursor), each with the cursor it was read at. The batch
// transaction, on the same connection, then turns those locks into its
// own (own) and drops the rows of any partition whose cursor moved
// meanwhile; finish_batch refuses to move a cursor that moved since. So an
// empty claim is one read-only statement, and a claim never walks a
// deleted row: the stream is never updated or deleted row by row, however
// long vacuum is held back.

// source says where a claimed delivery is.
type source string

const (
	fromStream source = "stream"
	fromParked source = "parked"
)

// cursorAt is an order partition's cursor as the claim read it.
type cursorAt struct {
	nextSeq, epoch int64
}

// claim runs the claim statement for up to size deliveries on conn, which
// then holds the locks of the partitions the rows came from.
func (w *worker) claim(ctx context.Context, conn db.DBTX, set settings, size int) ([]db.ClaimBatchRow, error) {
	rows, err := db.New(conn).ClaimBatch(ctx, db.ClaimBatchParams{
		Subscriber: w.c.cfg.Subscriber,
		BatchSize:  int32(size),
		Start:      rand.Int32N(16),
		Skip:       w.c.busy.list(),
		ParkOnDead: set.parkOnDead,
	})
	if err != nil {
		return nil, fmt.Errorf("inbox: claim: %w", err)
	}
	return rows, nil
}

// own takes, in the batch transaction, the partitions the claim read (and
// opens the savepoint the batch can roll back to without losing them), and
// returns those it may work. release lets go of the claim's session locks.
func own(ctx context.Context, tx pgx.Tx, subscriber string, parts map[int16]cursorAt, release bool) ([]int16, error) {
	ps := make([]int16, 0, len(parts))
	for p := range parts {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	epochs := make([]int64, len(ps))
	for i, p := range ps {
		epochs[i] = parts[p].epoch
	}
	var owned []int16
	b := &pgx.Batch{}
	b.Queue(db.OwnPartitions, subscriber, ps, epochs, release).QueryRow(func(r pgx.Row) error {
		return r.Scan(&owned)
	})
	b.Queue("SAVEPOINT " + batchSavepoint)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("inbox: own partitions: %w", err)
	}
	return owned, nil
}

// toEntry turns a claimed row into the delivery a handler sees.
func toEntry(subscriber string, set settings, r db.ClaimBatchRow) *entry {
	d := &Delivery{
		Message: postbox.Message{
			ID:        r.MessageID,
			Topic:     r.Topic,
			Type:      r.Type,
			Key:       r.Key,
			Payload:   r.Payload,
			CreatedAt: r.CreatedAt,
		},
		Subscriber: subscriber,
		Attempt:    int(r.Attempts) + 1,
		Partition:  int(r.KeyHash) % max(set.partitions, 1),
		EnqueuedAt: r.EnqueuedAt,
	}
	// A headers column that is not a JSON object (only hand-written SQL
	// could do that) leaves the delivery without headers rather than
	// failing it.
	d.Headers, _ = headers.Decode(r.Headers)
	return &entry{row: r, d: d}
}

// newBatch sorts the claimed deliveries into handling order and decides,
// before any handler runs, those that need none: second copies of one
// message (in the batch, or handled before), stream deliveries whose key waits behind a parked or dead one
// (blocked), and stream deliveries not yet due (delayed, parked until then).
func newBatch(c *Consumer, set settings, rows []db.ClaimBatchRow, started time.Time, claimed time.Duration) *batch {
	b := &batch{c: c, set: set, parts: make(map[int16]cursorAt), started: started, claimed: claimed}
	for _, r := range rows {
		b.entries = append(b.entries, toEntry(c.cfg.Subscriber, set, r))
		b.parts[r.Part] = cursorAt{nextSeq: r.NextSeq, epoch: r.Epoch}
	}
	// Per partition, seq order is publish order per key; parked deliveries
	// come before the stream's (their seq is lower), and across partitions
	// any order will do.
	slices.SortStableFunc(b.entries, func(x, y *entry) int { return cmp.Compare(x.row.Seq, y.row.Seq) })
	seen := make(map[uuid.UUID]bool, len(b.entries))
	now := time.Now()
	for _, e := range b.entries {
		switch {
		case seen[e.row.MessageID] || e.row.Handled:
			e.out = outDuplicate
		case e.stream() && e.row.Blocked:
			e.out = outBlocked
			b.holdKey(e)
		case e.stream() && e.row.AvailableAt.After(now):
			e.out = outDelayed
			b.holdKey(e)
		}
		seen[e.row.MessageID] = true
	}
	return b
}

// keepOwned drops the deliveries of partitions the batch did not get.
func (b *batch) keepOwned(owned []int16) (dropped int) {
	keep := make(map[int16]bool, len(owned))
	for _, p := range owned {
		keep[p] = true
	}
	for p := range b.parts {
		if !keep[p] {
			delete(b.parts, p)
			dropped++
		}
	}
	b.entries = slices.DeleteFunc(b.entries, func(e *entry) bool { return !keep[e.row.Part] })
	return dropped
}

// markDuplicates marks deliveries already handled within the dedup window.
func (b *batch) markDuplicates(handled []uuid.UUID) {
	set := make(map[uuid.UUID]bool, len(handled))
	for _, id := range handled {
		set[id] = true
	}
	for _, e := range b.entries {
		if set[e.row.MessageID] && e.out == outNone {
			e.out = outDuplicate
		}
	}
}

func (b *batch) ids() []uuid.UUID {
	ids := make([]uuid.UUID, len(b.entries))
	for i, e := range b.entries {
		ids[i] = e.row.MessageID
	}
	return ids
}
