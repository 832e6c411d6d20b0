package integration

// Interleavings and crash points an independent review of the core's
// concurrency found (December 2026). Each broke a guarantee (a lost
// delivery, a key handled out of order, a delivery stuck for good); each
// test's comment says how it did on the code as reviewed, and the test holds
// the fix.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

func newReviewRelay(pool *pgxpool.Pool, sink dispatcher.Sink) (*relay.Relay, error) {
	return relay.New(pool, relay.Config{Sink: sink, BatchSize: 2})
}

// reviewWhereIs says where a subscriber's delivery of id is: handled
// (processed), parked, dead, still in the stream ahead of its cursor, or
// nowhere (lost).
func reviewWhereIs(t *testing.T, ctx context.Context, db pgtest.Querier, sub string, id uuid.UUID) string {
	t.Helper()
	var where string
	err := db.QueryRow(ctx, `SELECT CASE
		WHEN EXISTS (SELECT 1 FROM postbox.processed WHERE subscriber = $1 AND message_id = $2) THEN 'processed'
		WHEN EXISTS (SELECT 1 FROM postbox.parked WHERE subscriber = $1 AND message_id = $2) THEN 'parked'
		WHEN EXISTS (SELECT 1 FROM postbox.dead_letters WHERE subscriber = $1 AND message_id = $2) THEN 'dead'
		WHEN EXISTS (SELECT 1 FROM postbox.inbox r JOIN postbox.inbox_cursors c
		             ON c.subscriber = r.subscriber AND c.part = r.part AND r.seq >= c.next_seq
		             WHERE r.subscriber = $1 AND r.message_id = $2) THEN 'stream'
		ELSE 'nowhere' END`, sub, id).Scan(&where)
	if err != nil {
		t.Fatal(err)
	}
	return where
}

// A batch whose optimistic pass fails on a delivery rolls back to the batch
// savepoint, resets the deliveries handled before it to "not reached", and
// runs again carefully; but the careful pass starts no handler once the
// batch is expired (ctx cancelled by a shutdown, or BatchBudget spent). The
// failed delivery keeps its outcome, so finish_batch moves the cursor past
// it, and with it past the earlier deliveries of its partition, which were
// neither handled (their effects rolled back) nor parked: lost.
func TestFailureAtShutdownKeepsEarlierDeliveries(t *testing.T) {
	t.Parallel()
	for _, batchHandler := range []bool{false, true} {
		t.Run(fmt.Sprintf("BatchHandler=%v", batchHandler), func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t, time.Minute)
			pool := pgtest.Pool(t, 8)
			subscribe(t, ctx, pool, "s", "t", "")
			if _, err := pool.Exec(ctx, `CREATE TABLE effects (message_id uuid PRIMARY KEY)`); err != nil {
				t.Fatal(err)
			}
			msgs := make([]*postbox.Message, 3)
			for i := range msgs {
				msgs[i] = &postbox.Message{Topic: "t", Key: "k", Payload: fmt.Appendf(nil, `{"n":%d}`, i+1)}
			}
			if err := outbox.PublishBatch(ctx, pool, msgs); err != nil {
				t.Fatal(err)
			}
			drain(t, ctx, pool)

			// The service shuts down while m2's handler runs; m2 fails
			// because of it (its own call out was cancelled).
			runCtx, shutdown := context.WithCancel(ctx)
			cfg := inbox.Config{Subscriber: "s", NoListen: true}
			if batchHandler {
				cfg.BatchHandler = inbox.BatchHandlerFunc(func(hctx context.Context, tx pgx.Tx, ds []*inbox.Delivery) error {
					errs := &inbox.BatchError{}
					for _, d := range ds {
						if d.ID == msgs[1].ID {
							shutdown()
							errs.Fail(d.ID, errors.New("downstream call cancelled: shutting down"))
							continue
						}
						if _, err := tx.Exec(hctx, `INSERT INTO effects VALUES ($1)`, d.ID); err != nil {
							return err
						}
					}
					return errs.Err()
				})
			} else {
				cfg.Handler = inbox.HandlerFunc(func(hctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
					if d.ID == msgs[1].ID {
						shutdown()
						return errors.New("downstream call cancelled: shutting down")
					}
					_, err := tx.Exec(hctx, `INSERT INTO effects VALUES ($1)`, d.ID)
					return err
				})
			}
			c, err := inbox.NewConsumer(pool, cfg)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.RunOnce(runCtx); err != nil {
				t.Logf("RunOnce: %v", err)
			}
			for i, m := range msgs {
				t.Logf("m%d: %s", i+1, reviewWhereIs(t, ctx, pool, "s", m.ID))
			}
			if w := reviewWhereIs(t, ctx, pool, "s", msgs[0].ID); w == "nowhere" {
				t.Errorf("m1 is lost: not handled (effects: %d rows for it), not parked, not dead, and its cursor is past it",
					pgtest.Count(t, ctx, pool, `SELECT count(*) FROM effects WHERE message_id = $1`, msgs[0].ID))
			}
		})
	}
}

// The same with BatchBudget instead of a shutdown: a handler that fails
// after the batch has run for its budget loses the deliveries handled
// before it in its partition.
func TestFailureAfterBudgetKeepsEarlierDeliveries(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, time.Minute)
	pool := pgtest.Pool(t, 8)
	subscribe(t, ctx, pool, "s", "t", "")
	msgs := make([]*postbox.Message, 3)
	for i := range msgs {
		msgs[i] = &postbox.Message{Topic: "t", Key: "k", Payload: fmt.Appendf(nil, `{"n":%d}`, i+1)}
	}
	if err := outbox.PublishBatch(ctx, pool, msgs); err != nil {
		t.Fatal(err)
	}
	drain(t, ctx, pool)
	budget := 200 * time.Millisecond
	c, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: "s", NoListen: true, BatchBudget: budget,
		Handler: inbox.HandlerFunc(func(hctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
			if d.ID == msgs[1].ID {
				// a slow handler that then fails (a timeout of its own)
				_, err := tx.Exec(hctx, `SELECT pg_sleep($1)`, (budget + 50*time.Millisecond).Seconds())
				if err != nil {
					return err
				}
				return errors.New("downstream timed out")
			}
			return nil
		})})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.RunOnce(ctx); err != nil {
		t.Logf("RunOnce: %v", err)
	}
	for i, m := range msgs {
		t.Logf("m%d: %s", i+1, reviewWhereIs(t, ctx, pool, "s", m.ID))
	}
	if w := reviewWhereIs(t, ctx, pool, "s", msgs[0].ID); w == "nowhere" {
		t.Errorf("m1 is lost: not handled, not parked, not dead, and its cursor is past it")
	}
}

// reviewSamePartition returns n keys of one order partition.
func reviewSamePartition(n int) []string {
	var keys []string
	for i := 0; len(keys) < n; i++ {
		k := fmt.Sprintf("key-%d", i)
		if dispatcher.Partition(k, 16) == 3 {
			keys = append(keys, k)
		}
	}
	return keys
}

// A refused COMMIT (a deferred constraint) with one handled delivery B
// records B's failure alone (recordAlone): a batch of B only, whose cursor
// moves to B.seq+1. Unlike the lost-connection path (first()), commitFailed
// does not check that B is the first stream delivery of its partition in
// the batch: an earlier delivery A of the same partition that the batch
// would have parked (delayed, blocked, or failed) is passed by the cursor
// and never parked: lost.
func TestRefusedCommitKeepsEarlierParkedDelivery(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		delay bool // A is delayed (DeliverAt); else A's handler fails
	}{{"delayed", true}, {"failed", false}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t, time.Minute)
			pool := pgtest.Pool(t, 8)
			subscribe(t, ctx, pool, "s", "t", "")
			for _, sql := range []string{
				`CREATE TABLE parent (id int PRIMARY KEY)`,
				`CREATE TABLE child (pid int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)`,
			} {
				if _, err := pool.Exec(ctx, sql); err != nil {
					t.Fatal(err)
				}
			}
			keys := reviewSamePartition(2)
			a := &postbox.Message{Topic: "t", Key: keys[0], Payload: []byte(`{}`)}
			if tc.delay {
				a.DeliverAt = time.Now().Add(time.Hour)
			}
			b := &postbox.Message{Topic: "t", Key: keys[1], Payload: []byte(`{}`)}
			for _, m := range []*postbox.Message{a, b} {
				if err := outbox.Publish(ctx, pool, m); err != nil {
					t.Fatal(err)
				}
			}
			drain(t, ctx, pool)
			c, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: "s", NoListen: true,
				Handler: inbox.HandlerFunc(func(hctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
					if d.ID == a.ID {
						return errors.New("A fails, will be retried")
					}
					// B's effect breaks a deferred constraint: COMMIT refuses it.
					_, err := tx.Exec(hctx, `INSERT INTO child VALUES (42)`)
					return err
				})})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.RunOnce(ctx); err != nil {
				t.Logf("RunOnce: %v", err)
			}
			t.Logf("A: %s, B: %s", reviewWhereIs(t, ctx, pool, "s", a.ID), reviewWhereIs(t, ctx, pool, "s", b.ID))
			if w := reviewWhereIs(t, ctx, pool, "s", a.ID); w == "nowhere" {
				t.Errorf("A is lost: not handled, not parked, not dead, and its cursor is past it")
			}
		})
	}
}

// A replay racing a claim of the letter's partition (the claim decided
// "nothing parked" in one statement and read the stream in the next, and
// the replay committed in between) let the key's later delivery go first.
// Replay and purge now take the partitions' order locks first
// (postbox.lock_order_partitions), so they wait for the claim and its batch:
// TestReplayedLetterWaitsBehindItsKey (package inbox) shows the wait.

// The Sink path: sink_claim moves to postbox.scheduled only the not-yet-due
// rows among the first batch_size rows above the mark, but returns up to
// batch_size due rows from the whole partition. A batch that comes back
// short ("not full") then raises the partition's mark to the horizon,
// past not-yet-due rows beyond that window that were neither delivered nor
// scheduled. The Sink path never sweeps (marks.forStatement is only called
// by the PostgreSQL path), so such a row stays in the outbox, below the
// mark, for as long as the relay runs: never delivered.
func TestSinkNeverStrandsADelayedRowBelowTheMark(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, time.Minute)
	pool := pgtest.Pool(t, 8)
	keys := reviewSamePartition(4) // partition 3: the sink path visits 0, 1, 2 first
	soon := time.Now().Add(2 * time.Second)
	var msgs []*postbox.Message
	for i, k := range keys {
		m := &postbox.Message{Topic: "t", Key: k, Payload: fmt.Appendf(nil, `{"n":%d}`, i)}
		if i != 2 { // rows 0, 1 and 3 are due in 2s; row 2 now
			m.DeliverAt = soon
		}
		if err := outbox.Publish(ctx, pool, m); err != nil {
			t.Fatal(err)
		}
		msgs = append(msgs, m)
	}
	var mu sync.Mutex
	got := map[uuid.UUID]int{}
	sink := dispatcher.SinkFunc(func(_ context.Context, b []dispatcher.Envelope) error {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range b {
			got[e.ID]++
		}
		return nil
	})
	r, err := newReviewRelay(pool, sink)
	if err != nil {
		t.Fatal(err)
	}
	delivered := func(i int) bool {
		mu.Lock()
		defer mu.Unlock()
		return got[msgs[i].ID] > 0
	}
	// Rows 0, 1 come back from postbox.scheduled when due, with new ids.
	pgtest.WaitFor(t, ctx, 20*time.Second, "rows 0, 1, 2 delivered", func() bool {
		r.Chores(ctx)
		if _, err := r.Drain(ctx); err != nil {
			t.Fatal(err)
		}
		return delivered(0) && delivered(1) && delivered(2)
	})
	// Row 3 is due as long as rows 0 and 1: a few more rounds over every
	// partition.
	for range 3 {
		r.Chores(ctx)
		if _, err := r.Drain(ctx); err != nil {
			t.Fatal(err)
		}
	}
	inOutbox := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.outbox WHERE message_id = $1`, msgs[3].ID)
	inScheduled := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.scheduled WHERE message_id = $1`, msgs[3].ID)
	t.Logf("row 3: delivered %v, in outbox %d, in scheduled %d", delivered(3), inOutbox, inScheduled)
	if !delivered(3) {
		t.Errorf("row 3 (due since %s) was never delivered: it sits in the outbox below the partition's mark", soon.Format(time.TimeOnly))
	}
	// Control: a relay with fresh marks (a restart) delivers it at once.
	fresh, err := newReviewRelay(pool, sink)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fresh.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("after a restart (fresh marks): row 3 delivered %v", delivered(3))
}

// A delayed message (DeliverAt) whose key is blocked when the consumer
// meets it is parked as 'blocked' at available_at = infinity: its
// deliver_at is dropped (parked has no column for it, and the stream row's
// available_at is not carried). When the key's head is handled, the release
// sets available_at = now, so the message is handled at once, long before
// its DeliverAt.
func TestBlockedDelayedMessageWaitsForItsTime(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, time.Minute)
	pool := pgtest.Pool(t, 8)
	if err := dispatcher.DeclareSubscriber(ctx, pool, "s", dispatcher.Options{
		Backoff: dispatcher.Backoff{Initial: time.Millisecond, Max: 10 * time.Millisecond}}); err != nil {
		t.Fatal(err)
	}
	subscribe(t, ctx, pool, "s", "t", "")
	m1 := &postbox.Message{Topic: "t", Key: "k", Payload: []byte(`{"n":1}`)}
	m2 := &postbox.Message{Topic: "t", Key: "k", Payload: []byte(`{"n":2}`), DeliverAt: time.Now().Add(time.Hour)}
	var mu sync.Mutex
	handledAt := map[uuid.UUID]time.Time{}
	fail := true
	c, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: "s", NoListen: true,
		Handler: inbox.HandlerFunc(func(hctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
			mu.Lock()
			defer mu.Unlock()
			if d.ID == m1.ID && fail {
				fail = false
				return errors.New("first attempt fails")
			}
			handledAt[d.ID] = time.Now()
			return nil
		})})
	if err != nil {
		t.Fatal(err)
	}
	if err := outbox.Publish(ctx, pool, m1); err != nil {
		t.Fatal(err)
	}
	drain(t, ctx, pool)
	if _, err := c.RunOnce(ctx); err != nil { // m1 fails: parked for a retry
		t.Fatal(err)
	}
	if err := outbox.Publish(ctx, pool, m2); err != nil {
		t.Fatal(err)
	}
	drain(t, ctx, pool)
	pgtest.WaitFor(t, ctx, 10*time.Second, "m1 handled", func() bool {
		if _, err := c.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		return !handledAt[m1.ID].IsZero()
	})
	for range 3 {
		if _, err := c.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if at, ok := handledAt[m2.ID]; ok {
		t.Errorf("m2 (DeliverAt %s) was handled at %s, %s early", m2.DeliverAt.Format(time.TimeOnly),
			at.Format(time.TimeOnly), m2.DeliverAt.Sub(at).Round(time.Second))
	}
}

// relay.transient does not count 57014 (query_canceled: statement_timeout,
// pg_cancel_backend) as transient. A relay whose statements time out for a
// reason that is not any row's (here: waiting behind a DDL lock on
// postbox.subscriptions, as a migration takes) halves its batch down to one
// row and then quarantines that row, a healthy message, as a dead letter of
// _relay; later messages of its key move on without it, and a replay puts
// it back behind them.
func TestStatementTimeoutQuarantinesNoHealthyRow(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, time.Minute)
	pool := pgtest.Pool(t, 8)
	subscribe(t, ctx, pool, "s", "t", "")
	m := &postbox.Message{Topic: "t", Key: "k", Payload: []byte(`{}`)}
	if err := outbox.Publish(ctx, pool, m); err != nil {
		t.Fatal(err)
	}
	cfg := pool.Config().Copy()
	cfg.MaxConns = 2
	cfg.ConnConfig.RuntimeParams["statement_timeout"] = "300ms"
	rpool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(rpool.Close)
	r, err := relay.New(rpool, relay.Config{BatchSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	// A migration holds an exclusive lock on postbox.subscriptions.
	ddl, err := pgx.ConnectConfig(ctx, pool.Config().ConnConfig.Copy())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ddl.Close(context.Background()) })
	tx, err := ddl.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `LOCK TABLE postbox.subscriptions IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	var quarantined int
	for i := 0; i < 8 && quarantined == 0; i++ {
		res, err := r.RunOnce(ctx)
		t.Logf("RunOnce: %+v, %v", res, err)
		quarantined += res.Quarantined
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if n := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.dead_letters WHERE subscriber = '_relay' AND message_id = $1`, m.ID); n > 0 {
		t.Errorf("a healthy message was quarantined (a dead letter of _relay) because its statement waited on a lock")
	}
}

// replay_dead_letters tells a no-route letter by last_error = 'no-route'
// alone, not by what made it (the relay, with attempts 0 and is_queue).
// A subscriber's dead letter whose handler's error text happens to be
// "no-route" is sent back through the outbox as a queue send to its topic's
// name, instead of being parked for its subscriber: the subscriber never
// gets it again (it becomes a no-route letter of a "queue" named after the
// topic, or reaches a queue of that name).
func TestReplayOfAHandlerErrorNamedNoRoute(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, time.Minute)
	pool := pgtest.Pool(t, 8)
	if err := dispatcher.DeclareSubscriber(ctx, pool, "s", dispatcher.Options{MaxAttempts: 1}); err != nil {
		t.Fatal(err)
	}
	subscribe(t, ctx, pool, "s", "t", "")
	m := &postbox.Message{Topic: "t", Key: "k", Payload: []byte(`{}`)}
	if err := outbox.Publish(ctx, pool, m); err != nil {
		t.Fatal(err)
	}
	drain(t, ctx, pool)
	var mu sync.Mutex
	calls := 0
	c, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: "s", NoListen: true,
		Handler: inbox.HandlerFunc(func(hctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
			mu.Lock()
			defer mu.Unlock()
			calls++
			if calls == 1 {
				return errors.New("no-route") // e.g. a router app's own error text
			}
			return nil
		})})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if w := reviewWhereIs(t, ctx, pool, "s", m.ID); w != "dead" {
		t.Fatalf("m is %s, want dead", w)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT postbox.replay_dead_letters('s')`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("replay: %d, %v", n, err)
	}
	drain(t, ctx, pool)
	for range 3 {
		if _, err := c.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var where []string
	rows, err := pool.Query(ctx, `SELECT subscriber || ':' || last_error FROM postbox.dead_letters WHERE message_id = $1`, m.ID)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var w string
		if err := rows.Scan(&w); err != nil {
			t.Fatal(err)
		}
		where = append(where, w)
	}
	t.Logf("after the replay: handler calls %d, for s: %s, dead letters of the ID: %v", calls,
		reviewWhereIs(t, ctx, pool, "s", m.ID), where)
	if calls != 2 {
		t.Errorf("the replayed letter never reached its subscriber again")
	}
}

// replay_dead_letters parks a letter at available_at = infinity when an
// earlier parked delivery of its key exists (in its snapshot), counting on
// that delivery's batch to release it. It takes no order partition lock,
// so a batch that handles that earlier delivery concurrently (its release
// step does not see the uncommitted replayed row) commits without
// releasing it: the replayed letter waits at infinity behind nothing, and
// every later delivery of its key parks behind it. Stuck forever. (An
// operator replaying a key's letters in two calls, or in max_rows chunks,
// while consumers run.)
func TestReplayRacingTheHeadsBatchReleasesTheKey(t *testing.T) {
	t.Parallel()
	// KeyParks never has two dead letters of one key (the second waits
	// behind the first), so this is KeyProceeds, the default.
	for _, onDead := range []string{dispatcher.KeyProceeds} {
		t.Run(onDead, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t, time.Minute)
			pool := pgtest.Pool(t, 8)
			if err := dispatcher.DeclareSubscriber(ctx, pool, "s", dispatcher.Options{MaxAttempts: 1, KeyOnDead: onDead}); err != nil {
				t.Fatal(err)
			}
			subscribe(t, ctx, pool, "s", "t", "")
			msgs := make([]*postbox.Message, 3)
			for i := range msgs {
				msgs[i] = &postbox.Message{Topic: "t", Key: "k", Payload: fmt.Appendf(nil, `{"n":%d}`, i+1)}
			}
			var mu sync.Mutex
			failing := true
			handled := map[uuid.UUID]bool{}
			c, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: "s", NoListen: true,
				Handler: inbox.HandlerFunc(func(hctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
					mu.Lock()
					defer mu.Unlock()
					if failing {
						return errors.New("down")
					}
					handled[d.ID] = true
					return nil
				})})
			if err != nil {
				t.Fatal(err)
			}
			// m1 and m2 become dead letters.
			if err := outbox.PublishBatch(ctx, pool, msgs[:2]); err != nil {
				t.Fatal(err)
			}
			drain(t, ctx, pool)
			pgtest.WaitFor(t, ctx, 10*time.Second, "m1 and m2 dead", func() bool {
				if _, err := c.RunOnce(ctx); err != nil {
					t.Fatal(err)
				}
				return pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.dead_letters WHERE subscriber = 's'`) == 2
			})
			mu.Lock()
			failing = false
			mu.Unlock()
			// The operator replays m1, then m2 in a second call.
			if _, err := pool.Exec(ctx, `SELECT postbox.replay_dead_letters('s', ARRAY[$1::uuid])`, msgs[0].ID); err != nil {
				t.Fatal(err)
			}
			r, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Rollback(ctx)
			if _, err := r.Exec(ctx, `SELECT postbox.replay_dead_letters('s', ARRAY[$1::uuid])`, msgs[1].ID); err != nil {
				t.Fatal(err)
			}
			// Meanwhile a consumer's batch handles m1 and commits.
			if _, err := c.RunOnce(ctx); err != nil {
				t.Fatal(err)
			}
			if err := r.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if err := outbox.Publish(ctx, pool, msgs[2]); err != nil {
				t.Fatal(err)
			}
			drain(t, ctx, pool)
			for range 5 {
				if _, err := c.RunOnce(ctx); err != nil {
					t.Fatal(err)
				}
			}
			var avail string
			if err := pool.QueryRow(ctx, `SELECT coalesce((SELECT available_at::text FROM postbox.parked WHERE subscriber = 's' AND message_id = $1), '-')`,
				msgs[1].ID).Scan(&avail); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			t.Logf("m1 handled %v, m2 handled %v (parked, available_at %s), m3 handled %v (%s)",
				handled[msgs[0].ID], handled[msgs[1].ID], avail, handled[msgs[2].ID], reviewWhereIs(t, ctx, pool, "s", msgs[2].ID))
			if !handled[msgs[1].ID] || !handled[msgs[2].ID] {
				t.Errorf("key k is stuck: the replayed m2 waits at infinity with no head to release it, and m3 waits behind it")
			}
		})
	}
}
