package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
)

// insertEffects writes one effect row per delivery in one statement.
func insertEffects(ctx context.Context, tx pgx.Tx, batch []*inbox.Delivery) error {
	ids := make([]uuid.UUID, len(batch))
	keys := make([]string, len(batch))
	ns := make([]int32, len(batch))
	for i, d := range batch {
		ids[i], keys[i], ns[i] = d.ID, d.Key, int32(payloadN(d))
	}
	_, err := tx.Exec(ctx, `INSERT INTO effects (message_id, key, n)
		SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[])`, ids, keys, ns)
	return err
}

// A BatchHandler gets the whole batch in one call. One delivery it reports
// failed (a *BatchError) is retried, then dead; its effects never commit;
// the others commit exactly once.
func TestBatchHandlerFailsOnlyWhatItNames(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 20
	b := setup(t, n, n, dispatcher.Options{MaxAttempts: 2, Backoff: dispatcher.Backoff{Initial: time.Millisecond, Max: time.Millisecond}})
	var calls atomic.Int64
	h := inbox.BatchHandlerFunc(func(ctx context.Context, tx pgx.Tx, batch []*inbox.Delivery) error {
		calls.Add(1)
		if err := insertEffects(ctx, tx, batch); err != nil {
			return err
		}
		var errs inbox.BatchError
		for _, d := range batch {
			if payloadN(d) == 7 {
				errs.Fail(d.ID, errors.New("seven is unlucky"))
			}
		}
		return errs.Err()
	})
	c := b.consumer(t, inbox.Config{BatchHandler: h, NoListen: true})
	waitFor(t, "every delivery handled or dead", func() (bool, error) {
		if _, err := c.RunOnce(ctx); err != nil {
			return false, err
		}
		return pgtest.Depths(t, ctx, b.pool, "work").Pending() == 0, nil
	})
	if got := b.effects(t); got != n-1 {
		t.Fatalf("effects = %d, want %d", got, n-1)
	}
	if got := b.count(t, `SELECT count(DISTINCT message_id) FROM effects`); got != n-1 {
		t.Fatalf("distinct effects = %d, want %d", got, n-1)
	}
	if got := b.count(t, `SELECT count(*) FROM effects WHERE n = 7`); got != 0 {
		t.Fatal("the failed delivery's effects committed")
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.dead_letters WHERE key = 'k7' AND attempts = 2
		AND last_error = 'seven is unlucky'`); got != 1 {
		t.Fatal("the failed delivery is not a dead letter after 2 attempts")
	}
	if s := c.Stats(); s.Handled != n-1 || s.Failed != 1 || s.Dead != 1 {
		t.Fatalf("stats = %+v, want %d handled, 1 failed, 1 dead", s, n-1)
	}
}

// A BatchHandler that fails as a whole, for one delivery it does not name,
// is handed halves of the batch until that delivery fails alone: only it is
// charged an attempt.
func TestBatchHandlerPlainErrorIsBisected(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 16
	b := setup(t, n, n, dispatcher.Options{MaxAttempts: 1})
	h := inbox.BatchHandlerFunc(func(ctx context.Context, tx pgx.Tx, batch []*inbox.Delivery) error {
		for _, d := range batch {
			if payloadN(d) == 11 {
				return errors.New("the batch contains a bad order")
			}
		}
		return insertEffects(ctx, tx, batch)
	})
	c := b.consumer(t, inbox.Config{BatchHandler: h, NoListen: true})
	if got, err := c.RunOnce(ctx); err != nil || got != n {
		t.Fatalf("RunOnce = %d, %v; want %d", got, err, n)
	}
	if got := b.effects(t); got != n-1 {
		t.Fatalf("effects = %d, want %d", got, n-1)
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.dead_letters WHERE key = 'k11'`); got != 1 {
		t.Fatal("the bad delivery is not the dead letter")
	}
	if s := c.Stats(); s.Handled != n-1 || s.Dead != 1 || s.Failed != 0 {
		t.Fatalf("stats = %+v, want %d handled and only the bad one dead", s, n-1)
	}
}

// A BatchHandler sees a key's deliveries in order, and a failed one's later
// deliveries are not handed over until it succeeds.
func TestBatchHandlerKeepsKeyOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 30
	b := setup(t, n, 3, dispatcher.Options{Backoff: dispatcher.Backoff{Initial: time.Millisecond, Max: time.Millisecond}})
	var failedOnce atomic.Bool
	h := inbox.BatchHandlerFunc(func(ctx context.Context, tx pgx.Tx, batch []*inbox.Delivery) error {
		last := map[string]int{}
		var errs inbox.BatchError
		var ok []*inbox.Delivery
		for _, d := range batch {
			if prev, seen := last[d.Key]; seen && prev >= payloadN(d) {
				return fmt.Errorf("key %s: %d after %d", d.Key, payloadN(d), prev)
			}
			last[d.Key] = payloadN(d)
			if payloadN(d) == 4 && failedOnce.CompareAndSwap(false, true) {
				errs.Fail(d.ID, errors.New("try again"))
				continue
			}
			ok = append(ok, d)
		}
		if err := insertEffects(ctx, tx, ok); err != nil {
			return err
		}
		return errs.Err()
	})
	c := b.consumer(t, inbox.Config{BatchHandler: h, NoListen: true, BatchSize: 10})
	waitFor(t, "every delivery handled", func() (bool, error) {
		if _, err := c.RunOnce(ctx); err != nil {
			return false, err
		}
		return pgtest.Depths(t, ctx, b.pool, "work").Pending() == 0, nil
	})
	if got := b.count(t, `SELECT count(DISTINCT message_id) FROM effects`); got != n {
		t.Fatalf("effects = %d, want %d", got, n)
	}
	if got := b.count(t, `SELECT count(*) FROM (SELECT n, lag(n) OVER (PARTITION BY key ORDER BY at, n) AS prev
		FROM effects) e WHERE e.prev >= e.n`); got != 0 {
		t.Fatalf("%d effects out of key order", got)
	}
}

// In the optimistic pass no delivery has a savepoint; when one fails, the
// batch runs again carefully: the failed delivery's effects never commit,
// every other delivery's commit exactly once, and the failure is charged
// one attempt.
func TestFailureInAnOptimisticBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 10
	b := setup(t, n, n, dispatcher.Options{MaxAttempts: 5})
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		if err := recordEffect(ctx, tx, d); err != nil {
			return err
		}
		if payloadN(d) == 5 {
			return errors.New("five fails after writing its effect")
		}
		return nil
	})
	c := b.consumer(t, inbox.Config{Handler: h, NoListen: true})
	if got, err := c.RunOnce(ctx); err != nil || got != n {
		t.Fatalf("RunOnce = %d, %v; want %d", got, err, n)
	}
	if got := b.effects(t); got != n-1 {
		t.Fatalf("effects = %d, want %d", got, n-1)
	}
	if got := b.count(t, `SELECT count(DISTINCT message_id) FROM effects`); got != n-1 {
		t.Fatalf("distinct effects = %d, want %d", got, n-1)
	}
	if got := b.count(t, `SELECT count(*) FROM effects WHERE n = 5`); got != 0 {
		t.Fatal("the failed delivery's effect committed")
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.parked WHERE key = 'k5' AND attempts = 1`); got != 1 {
		t.Fatal("the failed delivery was not charged exactly one attempt")
	}
	if s := c.Stats(); s.Handled != n-1 || s.Failed != 1 {
		t.Fatalf("stats = %+v, want %d handled and 1 failed", s, n-1)
	}
}

// The server ending a slow batch's session (idle_in_transaction_session_
// timeout below a handler's pause) loses that batch: the consumer shrinks
// its batches until the slow delivery runs alone, and only then charges it
// an attempt. Nothing loops, and no other delivery is charged anything.
func TestSessionTimeoutChargesOnlyTheSlowDelivery(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 8
	b := setup(t, n, n, dispatcher.Options{MaxAttempts: 2, Backoff: dispatcher.Backoff{Initial: time.Millisecond, Max: time.Millisecond}})
	b.exec(t, `DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET idle_in_transaction_session_timeout = %L', current_database(), '150ms'); END $$`)
	// A new b.pool, so its sessions start with the database's setting.
	slow := pgtest.Connect(t, b.pool, 8)
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		if err := recordEffect(ctx, tx, d); err != nil {
			return err
		}
		if payloadN(d) == 3 {
			select { // idle in transaction past the server's timeout
			case <-time.After(400 * time.Millisecond):
			case <-ctx.Done():
			}
		}
		return nil
	})
	c := newConsumer(t, slow, inbox.Config{Subscriber: "work", Handler: h, NoListen: true, HandlerTimeout: 5 * time.Second})
	runUntil(t, c, 40, func() bool { return pgtest.Depths(t, ctx, b.pool, "work").Pending() == 0 })
	if got := b.count(t, `SELECT count(DISTINCT message_id) FROM effects`); got != n-1 {
		t.Fatalf("effects = %d, want the %d other deliveries", got, n-1)
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.dead_letters WHERE key = 'k3' AND attempts = 2`); got != 1 {
		t.Fatal("the slow delivery is not dead after its 2 attempts")
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.dead_letters`); got != 1 {
		t.Fatalf("dead letters = %d, want only the slow one", got)
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.parked`); got != 0 {
		t.Fatalf("parked = %d, want none: no other delivery charged", got)
	}
}

// The budget stops a batch from starting handlers once it has run that
// long; what it handled commits, the rest waits for the next batch.
func TestBatchBudgetCommitsWhatFinished(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 10
	b := setup(t, n, n, dispatcher.Options{})
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		time.Sleep(30 * time.Millisecond) // a slow handler; the budget is what is tested
		return recordEffect(ctx, tx, d)
	})
	c := b.consumer(t, inbox.Config{Handler: h, NoListen: true, BatchBudget: 50 * time.Millisecond})
	if _, err := c.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	got := b.effects(t)
	if got < 1 || got >= n {
		t.Fatalf("first batch handled %d, want at least 1 and fewer than %d (the budget stopped it)", got, n)
	}
	if d := pgtest.Depths(t, ctx, b.pool, "work"); d.Pending() != n-got {
		t.Fatalf("depths = %+v, want the %d not reached still pending", d, n-got)
	}
	b.runUntilEmpty(t, c)
	if got := b.count(t, `SELECT count(DISTINCT message_id) FROM effects`); got != n {
		t.Fatalf("effects = %d, want %d", got, n)
	}
}

// A handler that returns ErrRelease hands its delivery back: its effects
// roll back, no attempt is counted, and neither it nor what follows it in
// its partition is passed; it is handled on a later claim.
func TestReleasedDeliveryIsHandedBackUncharged(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 6
	b := setup(t, n, 1, dispatcher.Options{}) // one key: one partition, in order
	var released atomic.Bool
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		if err := recordEffect(ctx, tx, d); err != nil {
			return err
		}
		if payloadN(d) == 2 && released.CompareAndSwap(false, true) {
			return fmt.Errorf("shutting down: %w", inbox.ErrRelease)
		}
		return nil
	})
	c := b.consumer(t, inbox.Config{Handler: h, NoListen: true})
	if _, err := c.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if got := b.effects(t); got != 2 {
		t.Fatalf("effects after the release = %d, want messages 0 and 1 only", got)
	}
	if d := pgtest.Depths(t, ctx, b.pool, "work"); d.Ready != n-2 {
		t.Fatalf("depths = %+v, want the released one and those behind it ready", d)
	}
	b.runUntilEmpty(t, c)
	if got := b.count(t, `SELECT count(DISTINCT message_id) FROM effects`); got != n {
		t.Fatalf("effects = %d, want %d", got, n)
	}
	if s := c.Stats(); s.Failed != 0 || s.Dead != 0 {
		t.Fatalf("stats = %+v: a release is no failure", s)
	}
}

// With SavepointPerDelivery a failure does not run the batch's other
// handlers again.
func TestSavepointPerDeliveryRunsEachHandlerOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 10
	b := setup(t, n, n, dispatcher.Options{})
	var calls atomic.Int64
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		calls.Add(1)
		if payloadN(d) == 5 {
			return errors.New("five fails")
		}
		return recordEffect(ctx, tx, d)
	})
	c := b.consumer(t, inbox.Config{Handler: h, NoListen: true, SavepointPerDelivery: true})
	if _, err := c.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if got := calls.Load(); got != n {
		t.Fatalf("handler calls = %d, want %d (each once)", got, n)
	}
	if got := b.effects(t); got != n-1 {
		t.Fatalf("effects = %d, want %d", got, n-1)
	}
}
