package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

// setup declares queue "work", publishes n messages over keys, relays them,
// and creates the effects table (no unique constraint, on purpose).
func setup(t *testing.T, n, keys int, opts dispatcher.Options) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	pool := pgtest.Pool(t, 16)
	if err := dispatcher.DeclareQueue(ctx, pool, "work", opts); err != nil {
		t.Fatal(err)
	}
	// effects holds what handlers write through their transaction; calls
	// logs every handler call through the pool, outside that transaction,
	// so it keeps the calls whose effects were rolled back.
	if _, err := pool.Exec(ctx, `CREATE TABLE effects (message_id uuid, key text, n int, at timestamptz DEFAULT clock_timestamp());
		CREATE TABLE calls (id bigint GENERATED ALWAYS AS IDENTITY, message_id uuid, n int, attempt int,
		                    at timestamptz DEFAULT clock_timestamp(), note text)`); err != nil {
		t.Fatal(err)
	}
	// One transaction: outbox order is still send order, with one commit.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	for i := range n {
		msg := &postbox.Message{Topic: "work", Key: fmt.Sprintf("k%d", i%keys), Payload: []byte(fmt.Sprintf(`{"n":%d}`, i))}
		if err := outbox.Send(ctx, tx, msg); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	drain(t, pool)
	return pool
}

// drain relays everything in the outbox.
func drain(t *testing.T, pool *pgxpool.Pool) relay.Result {
	t.Helper()
	r, err := relay.New(pool, relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.Drain(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// exec runs sql on pool and fails the test on error.
func exec(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// mustCount is count that fails the test on error.
func mustCount(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) int {
	t.Helper()
	n, err := count(context.Background(), pool, sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// logCall records a handler call in table calls through the pool, so the
// record survives the rollback of the handler's transaction.
func logCall(ctx context.Context, pool *pgxpool.Pool, d *inbox.Delivery, note string) error {
	v, err := postbox.Decode[struct{ N int }](d.Payload)
	if err != nil {
		v.N = -1
	}
	_, err = pool.Exec(ctx, `INSERT INTO calls (message_id, n, attempt, note) VALUES ($1, $2, $3, $4)`, d.ID, v.N, d.Attempt, note)
	return err
}

func newConsumer(t *testing.T, pool *pgxpool.Pool, cfg inbox.Config) *inbox.Consumer {
	t.Helper()
	c, err := inbox.NewConsumer(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// run runs c until the test ends. stop cancels Run and returns what it
// returned; exited reports whether Run has returned without being stopped.
func run(t *testing.T, c *inbox.Consumer) (stop func() error, exited func() bool) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var runErr error
	go func() {
		defer close(done)
		runErr = c.Run(ctx)
	}()
	stop = func() error {
		cancel()
		<-done
		return runErr
	}
	exited = func() bool {
		select {
		case <-done:
			return ctx.Err() == nil
		default:
			return false
		}
	}
	t.Cleanup(func() { stop() })
	return stop, exited
}

// runUntilEmpty calls RunOnce until the subscriber has no pending delivery
// left that is available now.
func runUntilEmpty(t *testing.T, pool *pgxpool.Pool, c *inbox.Consumer, subscriber string) {
	t.Helper()
	ctx := context.Background()
	waitFor(t, "no pending deliveries", func() (bool, error) {
		if _, err := c.RunOnce(ctx); err != nil {
			return false, err
		}
		return pgtest.Depths(t, ctx, pool, subscriber).Ready == 0, nil
	})
}

var recordEffect = inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	v, err := postbox.Decode[struct{ N int }](d.Payload)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO effects (message_id, key, n) VALUES ($1, $2, $3)`, d.ID, d.Key, v.N)
	return err
})

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ok, err := cond()
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronization
	}
}

func count(ctx context.Context, pool *pgxpool.Pool, sql string, args ...any) (int, error) {
	var n int
	err := pool.QueryRow(ctx, sql, args...).Scan(&n)
	return n, err
}

func TestConsumerHandlesEachMessageOnceInKeyOrder(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const n = 2000
	pool := setup(t, n, 20, dispatcher.Options{})

	done := make(chan error, 2)
	for range 2 {
		c, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: "work", Handler: recordEffect, Concurrency: 3})
		if err != nil {
			t.Fatal(err)
		}
		go func() { done <- c.Run(ctx) }()
	}
	waitFor(t, "all effects", func() (bool, error) {
		got, err := count(ctx, pool, pgtest.PendingSQL)
		return got == 0, err
	})
	cancel()
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	ctx = context.Background()
	if got, _ := count(ctx, pool, `SELECT count(*) FROM effects`); got != n {
		t.Fatalf("effects = %d, want %d", got, n)
	}
	if got, _ := count(ctx, pool, `SELECT count(DISTINCT message_id) FROM effects`); got != n {
		t.Fatalf("distinct effects = %d, want %d", got, n)
	}
	// Per key, effects were written in publish order (n ascending).
	bad, err := count(ctx, pool, `SELECT count(*) FROM (
		SELECT n < lag(n) OVER (PARTITION BY key ORDER BY at) AS backwards FROM effects) x WHERE backwards`)
	if err != nil {
		t.Fatal(err)
	}
	if bad != 0 {
		t.Fatalf("%d effects out of key order", bad)
	}
}

func TestFailingMessageIsRetriedThenDeadLettered(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := setup(t, 1, 1, dispatcher.Options{MaxAttempts: 3, Backoff: dispatcher.Backoff{Initial: time.Millisecond, Max: 5 * time.Millisecond}})
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		if _, err := tx.Exec(ctx, `INSERT INTO effects (message_id) VALUES ($1)`, d.ID); err != nil {
			return err
		}
		return errors.New("boom")
	})
	c, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: "work", Handler: h})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "dead letter", func() (bool, error) {
		if _, err := c.RunOnce(ctx); err != nil {
			return false, err
		}
		n, err := count(ctx, pool, `SELECT count(*) FROM postbox.dead_letters WHERE attempts = 3 AND headers->>'x-retry-count' = '3' AND headers->>'x-original-error' = 'boom'`)
		return n == 1, err
	})
	if got, _ := count(ctx, pool, `SELECT count(*) FROM effects`); got != 0 {
		t.Fatalf("failed attempts left %d effects", got)
	}
	if s := c.Stats(); s.Failed != 2 || s.Dead != 1 {
		t.Fatalf("stats = %+v, want 2 failed and 1 dead", s)
	}
}

// A key's consecutive deliveries are one run: a batch takes them together
// and handles them in order, so a busy key is not limited to one message
// per transaction (nor per poll: PollInterval is an hour here).
func TestHotKeyRunIsOneBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 20
	pool := setup(t, n, 1, dispatcher.Options{})
	c := newConsumer(t, pool, inbox.Config{Subscriber: "work", Handler: recordEffect, Concurrency: 1, PollInterval: time.Hour, NoListen: true})
	run(t, c)
	waitFor(t, "all messages of the key handled", func() (bool, error) {
		n, err := count(ctx, pool, pgtest.PendingSQL)
		return n == 0, err
	})
	if s := c.Stats(); s.Handled != n || s.Batches != 1 {
		t.Fatalf("stats = %+v, want %d handled in 1 batch (one key's run)", s, n)
	}
	if got := mustCount(t, pool, `SELECT count(*) FROM (SELECT n, lag(n) OVER (ORDER BY at) AS prev FROM effects) e
		WHERE e.prev >= e.n`); got != 0 {
		t.Fatalf("%d deliveries of the key handled out of order", got)
	}
}
