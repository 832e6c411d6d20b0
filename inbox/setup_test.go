package inbox_test

import (
	"context"
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

// bundle is what an inbox test starts from (River's setup(t) pattern): a
// fresh database with its subscriber, the effects and calls tables, and a
// consumer builder. Its helpers fail the t they are given.
//
// effects holds what handlers write through their transaction (no unique
// constraint, on purpose: a delivery handled twice shows); calls logs
// every handler call through the pool, outside that transaction, so it
// keeps the calls whose effects were rolled back (logCall).
type bundle struct {
	pool       *pgxpool.Pool
	subscriber string // what consumer consumes by default
}

// setup declares queue "work" with opts, creates the tables, and sends n
// messages to it ({"n": i}, over keys keys: k0, k1, ...), relayed.
func setup(t *testing.T, n, keys int, opts dispatcher.Options) *bundle {
	t.Helper()
	ctx := context.Background()
	b := newBundle(t, "work")
	if err := dispatcher.DeclareQueue(ctx, b.pool, b.subscriber, opts); err != nil {
		t.Fatal(err)
	}
	// One transaction: outbox order is still send order, with one commit.
	tx, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	for i := range n {
		msg := &postbox.Message{Topic: b.subscriber, Key: fmt.Sprintf("k%d", i%keys), Payload: fmt.Appendf(nil, `{"n":%d}`, i)}
		if err := outbox.Send(ctx, tx, msg); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	b.drain(t)
	return b
}

// newBundle is a fresh database with the tables, and nothing declared.
func newBundle(t *testing.T, subscriber string) *bundle {
	t.Helper()
	b := &bundle{pool: pgtest.Pool(t, 16), subscriber: subscriber}
	b.exec(t, `CREATE TABLE effects (message_id uuid, key text, n int, step text, amount numeric, note text,
		                             at timestamptz DEFAULT clock_timestamp());
		CREATE TABLE calls (id bigint GENERATED ALWAYS AS IDENTITY, message_id uuid, n int, attempt int,
		                    at timestamptz DEFAULT clock_timestamp(), note text)`)
	return b
}

// consumer returns a consumer with cfg, of the bundle's subscriber unless
// cfg names another.
func (b *bundle) consumer(t *testing.T, cfg inbox.Config) *inbox.Consumer {
	t.Helper()
	if cfg.Subscriber == "" {
		cfg.Subscriber = b.subscriber
	}
	return newConsumer(t, b.pool, cfg)
}

// newConsumer is a consumer on pool, for tests of several pools.
func newConsumer(t *testing.T, pool *pgxpool.Pool, cfg inbox.Config) *inbox.Consumer {
	t.Helper()
	c, err := inbox.NewConsumer(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// drain relays everything in the outbox.
func (b *bundle) drain(t *testing.T) relay.Result {
	t.Helper()
	return pgtest.Drain(t, context.Background(), b.pool)
}

// exec runs sql.
func (b *bundle) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := b.pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// count runs a query returning one number.
func (b *bundle) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	return pgtest.Count(t, context.Background(), b.pool, sql, args...)
}

// effects counts the effects committed.
func (b *bundle) effects(t *testing.T) int {
	t.Helper()
	return b.count(t, `SELECT count(*) FROM effects`)
}

// logCall records a handler call in table calls through the pool, so the
// record survives the rollback of the handler's transaction.
func (b *bundle) logCall(ctx context.Context, d *inbox.Delivery, note string) error {
	v, err := postbox.Decode[struct{ N int }](d.Payload)
	if err != nil {
		v.N = -1
	}
	_, err = b.pool.Exec(ctx, `INSERT INTO calls (message_id, n, attempt, note) VALUES ($1, $2, $3, $4)`, d.ID, v.N, d.Attempt, note)
	return err
}

// runUntilEmpty calls c.RunOnce until the bundle's subscriber has no
// pending delivery left that is available now.
func (b *bundle) runUntilEmpty(t *testing.T, c *inbox.Consumer) {
	t.Helper()
	runUntilEmpty(t, b.pool, c, b.subscriber)
}

// runUntilEmpty calls c.RunOnce until subscriber has no pending delivery
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

// recordEffect writes the delivery's effect: its ID, key and n.
var recordEffect = inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	v, err := postbox.Decode[struct{ N int }](d.Payload)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO effects (message_id, key, n) VALUES ($1, $2, $3)`, d.ID, d.Key, v.N)
	return err
})

// payloadN is the delivery's n.
func payloadN(d *inbox.Delivery) int {
	v, _ := postbox.Decode[struct{ N int }](d.Payload)
	return v.N
}

// waitFor polls cond until it holds, and fails t on its error or after a
// minute.
func waitFor(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	pgtest.WaitFor(t, context.Background(), time.Minute, what, func() bool {
		ok, err := cond()
		if err != nil {
			t.Fatal(err)
		}
		return ok
	})
}

// count runs a query returning one number, for conditions of waitFor.
func count(ctx context.Context, pool *pgxpool.Pool, sql string, args ...any) (int, error) {
	var n int
	err := pool.QueryRow(ctx, sql, args...).Scan(&n)
	return n, err
}
