package relay

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/internal/db"
)

// Why marks. The relay deletes what it moves, and a long transaction
// anywhere on the cluster keeps vacuum from removing those rows: a claim
// that walked the outbox index from its start would step over every row
// deleted since that transaction began (measured: the drain fell from
// 3,000 to 240 messages/s under one such transaction). So each relay
// partition has a mark, an id at or below which every row is known to be
// moved, and the claim starts above it.
//
// A mark may pass an id only when no row with that id can still appear.
// Ids are drawn by INSERTs that hold a lock on an outbox slot until their
// transaction ends, so: read the id sequence's position L, then the
// transactions writing the outbox now (W); once every transaction of W has
// ended, every row with an id at or below L is committed or gone for good,
// and a claim that starts after that sees them all. That is horizon below.
// A long transaction that does not write the outbox does not hold the marks
// back. A sweep that ignores the marks runs every sweepInterval anyway, so
// a row that got below a mark some other way (an id written by hand) is
// still moved.

// partitions is the number of relay partitions, as postbox.order_partitions().
const partitions = 16

// sweepInterval is how often a batch ignores the marks.
const sweepInterval = 10 * time.Second

// marks are the relay partitions' marks, indexed by partition.
type marks [partitions]int64

// forStatement returns the marks for the next statement: zero when a sweep
// is due.
func (m *marks) forStatement(sweepAt *time.Time) marks {
	if time.Now().After(*sweepAt) {
		*sweepAt = time.Now().Add(sweepInterval)
		return marks{}
	}
	return *m
}

// advance raises the marks of the partitions a statement held, if the
// horizon had cleared before it began: up to the cleared id, or when the
// statement was cut by its limits, up to the last id it moved.
func (m *marks) advance(held []int16, cleared int64, full bool, maxID int64) {
	if cleared == 0 {
		return
	}
	to := cleared
	if full {
		to = min(to, maxID)
	}
	for _, p := range held {
		if int(p) < partitions && m[p] < to {
			m[p] = to
		}
	}
}

// horizon is the pending candidate for the marks: the sequence position
// lastID read before the outbox writers were.
type horizon struct {
	lastID  int64
	writers []string
	known   bool
}

// withBatch runs postbox.outbox_horizon and the relay statement in one
// pipeline (one round trip; each statement has its own snapshot, the relay
// statement's taken after the horizon check). It returns the id that every
// row at or below is now final, or 0 if the previous writers still run.
//
// idle skips the horizon check (an idle relay then runs one statement a
// poll): when the last batch moved nothing, the marks have nothing to
// catch up with.
func (h *horizon) withBatch(ctx context.Context, pool *pgxpool.Pool, p db.RelayBatchParams, idle bool) (cleared int64, row db.RelayBatchRow, err error) {
	b := &pgx.Batch{}
	var hz db.OutboxHorizonRow
	read := false
	if !idle {
		b.Queue(db.OutboxHorizon, h.writers).QueryRow(func(r pgx.Row) error {
			err := r.Scan(&hz.Writing, &hz.LastID, &hz.Writers)
			read = err == nil
			return err
		})
	}
	b.Queue(db.RelayBatch, p.BatchSize, p.MaxBytes, p.Marks, p.OnlyID).QueryRow(func(r pgx.Row) error {
		return r.Scan(&row.Claimed, &row.Candidates, &row.MinID, &row.MaxID, &row.Bytes, &row.Delivered,
			&row.Duplicates, &row.NoRoute, &row.Dropped, &row.Parts, &row.Subscribers, &row.Traceparents)
	})
	err = pool.SendBatch(ctx, b).Close()
	if !read {
		return 0, row, err // keep the candidate
	}
	if h.known && !hz.Writing && err == nil {
		cleared = h.lastID
	}
	if !h.known || !hz.Writing {
		// a new candidate: the position and the writers just read
		h.lastID, h.writers, h.known = hz.LastID, hz.Writers, true
	}
	return cleared, row, err
}

// check runs postbox.outbox_horizon on its own (the Sink path, whose claim
// is not a pipelined relay statement) and returns what withBatch would.
func (h *horizon) check(ctx context.Context, q *db.Queries) (cleared int64, err error) {
	hz, err := q.OutboxHorizon(ctx, h.writers)
	if err != nil {
		return 0, err
	}
	if h.known && !hz.Writing {
		cleared = h.lastID
	}
	if !h.known || !hz.Writing {
		h.lastID, h.writers, h.known = hz.LastID, hz.Writers, true
	}
	return cleared, nil
}
