package pgtest

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/relay"
)

// Querier is what the helpers need: a pool, a connection or a transaction.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Count runs a query returning one number and fails t on error.
func Count(t testing.TB, ctx context.Context, db Querier, sql string, args ...any) int {
	t.Helper()
	var n int64
	if err := db.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return int(n)
}

// WaitFor polls cond every few milliseconds until it holds, and fails t
// when it still does not after limit (the polling is not synchronization:
// cond reads the state the code under test produces).
func WaitFor(t testing.TB, ctx context.Context, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting after %s for %s", limit, what)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-tick.C:
		}
	}
}

// Depth is a subscriber's deliveries by state, as postbox.queue_depths
// counts them: Ready to be handled now, Waiting (delayed, in backoff, or
// blocked behind their key) and Dead letters.
type Depth struct {
	Ready, Waiting, Dead int
}

// Pending is Ready plus Waiting: deliveries not yet handled nor dead.
func (d Depth) Pending() int { return d.Ready + d.Waiting }

// Depths returns subscriber's depths (zero for a name with no deliveries).
func Depths(t testing.TB, ctx context.Context, db Querier, subscriber string) Depth {
	t.Helper()
	var d Depth
	err := db.QueryRow(ctx, `SELECT coalesce(sum(ready), 0), coalesce(sum(waiting), 0), coalesce(sum(dead), 0)
		FROM (SELECT ready, waiting, dead FROM postbox.queue_depths WHERE subscriber = $1
		      UNION ALL
		      SELECT (SELECT count(*) FROM postbox.parked k WHERE k.subscriber = $1 AND k.available_at <= now()),
		             (SELECT count(*) FROM postbox.parked k WHERE k.subscriber = $1 AND k.available_at > now()),
		             (SELECT count(*) FROM postbox.dead_letters d WHERE d.subscriber = $1)
		      WHERE NOT EXISTS (SELECT 1 FROM postbox.subscribers s WHERE s.name = $1)) x`, subscriber).
		Scan(&d.Ready, &d.Waiting, &d.Dead)
	if err != nil {
		t.Fatalf("depths of %s: %v", subscriber, err)
	}
	return d
}

// Attempts returns how many failed attempts the subscriber's pending or
// dead delivery of message id has had (0 if it never failed or is gone).
func Attempts(t testing.TB, ctx context.Context, db Querier, subscriber string, id any) int {
	t.Helper()
	return Count(t, ctx, db, `SELECT coalesce((SELECT attempts FROM postbox.parked WHERE subscriber = $1 AND message_id = $2),
		(SELECT attempts FROM postbox.dead_letters WHERE subscriber = $1 AND message_id = $2), 0)`, subscriber, id)
}

// PendingSQL counts every subscriber's pending deliveries (the stream past
// the cursors, and parked ones), for tests that wait until all is handled.
const PendingSQL = `SELECT (SELECT count(*) FROM postbox.inbox_cursors c
	JOIN postbox.inbox r ON r.subscriber = c.subscriber AND r.part = c.part AND r.seq >= c.next_seq)
	+ (SELECT count(*) FROM postbox.parked)`

// Connect opens another pool on the database of like, with up to maxConns
// connections; its sessions start afresh (with the database's settings as
// they are now). It is closed when t ends.
func Connect(t testing.TB, like *pgxpool.Pool, maxConns int) *pgxpool.Pool {
	t.Helper()
	cfg := like.Config().Copy()
	cfg.MaxConns = int32(maxConns)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("pgtest: open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// Drain runs a relay with the default settings over pool until the outbox
// has nothing it can claim, and fails t on error.
func Drain(t testing.TB, ctx context.Context, pool *pgxpool.Pool) relay.Result {
	t.Helper()
	r, err := relay.New(pool, relay.Config{})
	if err != nil {
		t.Fatalf("pgtest: relay: %v", err)
	}
	res, err := r.Drain(ctx)
	if err != nil {
		t.Fatalf("pgtest: drain the outbox: %v", err)
	}
	return res
}
