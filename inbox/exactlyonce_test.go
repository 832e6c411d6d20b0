package inbox_test

import (
	"context"
	"fmt"
	"sync/atomic"
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

// counted wraps h and counts its calls.
func counted(h inbox.Handler, calls *atomic.Int64) inbox.Handler {
	return inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		calls.Add(1)
		return h.Handle(ctx, tx, d)
	})
}

// The same message ID written to the outbox twice, before and after it was
// handled, is handled once: by a queue consumer (outbox.Send) and by a topic
// subscriber (outbox.Publish).
func TestSameMessageIDPublishedTwiceHasOneEffect(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		subscriber string
		write      func(context.Context, postbox.DBTX, *postbox.Message) error
		topic      string
	}{
		{"send", "work", outbox.Send, "work"},
		{"publish", "audit", outbox.Publish, "orders.created"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			b := setup(t, 0, 1, dispatcher.Options{})
			b.subscriber = tc.subscriber // the one consumed
			if err := dispatcher.Subscribe(ctx, b.pool, dispatcher.Subscription{Subscriber: "audit", Topic: "orders.created"}); err != nil {
				t.Fatal(err)
			}
			id := postbox.NewID()
			write := func() {
				t.Helper()
				// A fresh struct each time: the producer retried with the same ID.
				msg := &postbox.Message{ID: id, Topic: tc.topic, Key: "order-1", Payload: []byte(`{"n":1}`)}
				if err := tc.write(ctx, b.pool, msg); err != nil {
					t.Fatal(err)
				}
			}
			write()
			write()
			// In one relay batch: the relay drops the second copy.
			res := b.drain(t)
			if res.Claimed != 2 || res.Delivered != 1 || res.Duplicates != 1 {
				t.Fatalf("relay moved %+v, want 2 claimed, 1 delivered, 1 duplicate", res)
			}
			var calls atomic.Int64
			c := b.consumer(t, inbox.Config{Handler: counted(recordEffect, &calls)})
			b.runUntilEmpty(t, c)

			// Sent once more after it was handled: the relay finds the ID in
			// postbox.processed and drops it.
			write()
			if res := b.drain(t); res.Claimed != 1 || res.Delivered != 0 {
				t.Fatalf("relay moved %+v after handling, want 1 claimed and 0 delivered", res)
			}
			b.runUntilEmpty(t, c)

			if got := b.count(t, `SELECT count(*) FROM effects WHERE message_id = $1`, id); got != 1 {
				t.Fatalf("effects = %d, want 1", got)
			}
			if got := calls.Load(); got != 1 {
				t.Fatalf("handler calls = %d, want 1", got)
			}
			if s := c.Stats(); s.Handled != 1 || s.Duplicates != 0 {
				t.Fatalf("stats = %+v, want 1 handled", s)
			}
		})
	}
}

// A delivery that reaches the inbox again after its message was handled
// (an outside path, a relay racing the processed check) is dropped by the
// consumer's processed-row check: the handler does not run and it counts
// as a duplicate.
func TestDuplicateDeliveryAfterHandlingIsDropped(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 5
	b := setup(t, n, n, dispatcher.Options{})
	var calls atomic.Int64
	c := b.consumer(t, inbox.Config{Handler: counted(recordEffect, &calls)})
	b.runUntilEmpty(t, c)
	if got := b.count(t, `SELECT count(*) FROM postbox.processed WHERE subscriber = 'work'`); got != n {
		t.Fatalf("processed = %d, want %d", got, n)
	}

	// Deliver two handled messages again, straight into the inbox.
	b.exec(t, `INSERT INTO postbox.inbox (subscriber, part, message_id, key_hash, topic, key, payload, available_at, created_at)
		SELECT 'work', 0, e.message_id, 0, 'work', e.key, convert_to(json_build_object('n', e.n)::text, 'UTF8'), now(), now()
		FROM effects e WHERE e.n IN (1, 3)`)
	got, err := c.RunOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got != 2 {
		t.Fatalf("claimed %d, want the 2 duplicates", got)
	}
	if s := c.Stats(); s.Duplicates != 2 || s.Handled != n {
		t.Fatalf("stats = %+v, want %d handled and 2 duplicates", s, n)
	}
	if got := calls.Load(); got != n {
		t.Fatalf("handler calls = %d, want %d", got, n)
	}
	if got := b.effects(t); got != n {
		t.Fatalf("effects = %d, want %d", got, n)
	}
	if got := b.count(t, pgtest.PendingSQL); got != 0 {
		t.Fatalf("inbox rows = %d, want 0", got)
	}
}

// A consumer whose connection is killed after a handler wrote its effect
// but before the batch committed loses the whole batch, then handles it
// again: every message has exactly one effect, and Run keeps going.
func TestConnectionKilledBeforeCommitKeepsEffectsExactlyOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 20
	b := setup(t, n, n, dispatcher.Options{})
	const victim = 7
	var (
		blocked  atomic.Bool
		pids     = make(chan uint32, 1)
		released = make(chan struct{})
	)
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		if err := b.logCall(ctx, d, ""); err != nil {
			return err
		}
		if err := recordEffect(ctx, tx, d); err != nil {
			return err
		}
		v, _ := postbox.Decode[struct{ N int }](d.Payload)
		if v.N == victim && blocked.CompareAndSwap(false, true) {
			var pid uint32
			if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
				return err
			}
			pids <- pid
			<-released // the test killed this connection meanwhile
		}
		return nil
	})
	c := b.consumer(t, inbox.Config{Handler: h, BatchSize: 5, Concurrency: 2, PollInterval: 5 * time.Millisecond})
	_, exited := run(t, c)

	pid := <-pids
	var killed bool
	if err := b.pool.QueryRow(ctx, `SELECT pg_terminate_backend($1)`, pid).Scan(&killed); err != nil || !killed {
		t.Fatalf("pg_terminate_backend(%d) = %v, %v", pid, killed, err)
	}
	waitFor(t, "the killed backend to exit", func() (bool, error) {
		n, err := count(ctx, b.pool, `SELECT count(*) FROM pg_stat_activity WHERE pid = $1`, pid)
		return n == 0, err
	})
	close(released)

	// The stats count a batch after its commit returns, a moment after its
	// deliveries stop being pending: wait for both.
	waitFor(t, "every message handled", func() (bool, error) {
		left, err := count(ctx, b.pool, pgtest.PendingSQL)
		return left == 0 && c.Stats().Handled >= n, err
	})
	if exited() {
		t.Fatal("Run returned after the connection was killed")
	}
	if got := b.effects(t); got != n {
		t.Fatalf("effects = %d, want %d", got, n)
	}
	if got := b.count(t, `SELECT count(DISTINCT message_id) FROM effects`); got != n {
		t.Fatalf("distinct effects = %d, want %d", got, n)
	}
	// The victim ran twice: once on the killed connection, once for real.
	if got := b.count(t, `SELECT count(*) FROM calls WHERE n = $1`, victim); got != 2 {
		t.Fatalf("victim handled %d times, want 2", got)
	}
	if s := c.Stats(); s.Errors < 1 || s.Handled != n || s.Failed != 0 {
		t.Fatalf("stats = %+v, want at least 1 error, %d handled, no failed attempt (a kill is not the handler's fault)", s, n)
	}
}

// The connection is killed while the batch commits: a deferred constraint
// trigger makes the victim's COMMIT wait on an advisory lock the test holds,
// so the kill lands inside COMMIT, deterministically.
func TestConnectionKilledDuringCommitKeepsEffectsExactlyOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 10
	b := setup(t, n, n, dispatcher.Options{})
	const gateLock = 4242
	b.exec(t, `CREATE TABLE gate (message_id uuid);
		CREATE FUNCTION gate_wait() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NULL; END $$;
		CREATE CONSTRAINT TRIGGER gate_at_commit AFTER INSERT ON gate
		DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION gate_wait();`)
	holder, err := b.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_lock($1)`, gateLock); err != nil {
		t.Fatal(err)
	}

	const victim = 4
	var gated atomic.Bool
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		if err := recordEffect(ctx, tx, d); err != nil {
			return err
		}
		v, _ := postbox.Decode[struct{ N int }](d.Payload)
		if v.N == victim && gated.CompareAndSwap(false, true) {
			_, err := tx.Exec(ctx, `INSERT INTO gate VALUES ($1)`, d.ID)
			return err
		}
		return nil
	})
	c := b.consumer(t, inbox.Config{Handler: h, BatchSize: n, Concurrency: 1, PollInterval: 5 * time.Millisecond})
	_, exited := run(t, c)

	var pid uint32
	waitFor(t, "the batch's COMMIT to wait at the gate", func() (bool, error) {
		err := b.pool.QueryRow(ctx, `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND objid = $1`, gateLock).Scan(&pid)
		if err == pgx.ErrNoRows {
			return false, nil
		}
		return err == nil, err
	})
	var query string
	if err := b.pool.QueryRow(ctx, `SELECT query FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&query); err != nil {
		t.Fatal(err)
	}
	if query != "commit" && query != "COMMIT" {
		t.Fatalf("the gated backend runs %q, want commit", query)
	}
	b.exec(t, `SELECT pg_terminate_backend($1)`, pid)
	waitFor(t, "the killed backend to exit", func() (bool, error) {
		n, err := count(ctx, b.pool, `SELECT count(*) FROM pg_stat_activity WHERE pid = $1`, pid)
		return n == 0, err
	})
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_unlock($1)`, gateLock); err != nil {
		t.Fatal(err)
	}
	holder.Release()

	// The stats count a batch after its commit returns, a moment after its
	// deliveries stop being pending: wait for both.
	waitFor(t, "every message handled", func() (bool, error) {
		left, err := count(ctx, b.pool, pgtest.PendingSQL)
		return left == 0 && c.Stats().Handled >= n, err
	})
	if exited() {
		t.Fatal("Run returned after the connection was killed")
	}
	if got := b.effects(t); got != n {
		t.Fatalf("effects = %d, want %d", got, n)
	}
	if got := b.count(t, `SELECT count(DISTINCT message_id) FROM effects`); got != n {
		t.Fatalf("distinct effects = %d, want %d", got, n)
	}
	if got := b.count(t, `SELECT count(*) FROM gate`); got != 0 {
		t.Fatalf("gate rows = %d: the killed commit committed", got)
	}
	if s := c.Stats(); s.Errors < 1 || s.Handled != n {
		t.Fatalf("stats = %+v, want at least 1 error and %d handled", s, n)
	}
}

// Eight consumers, each with its own b.pool and one worker, compete for
// 20,000 messages over 100 keys while the relay moves them: every message is
// handled once, and each key's messages in publish order.
func TestCompetingConsumersHandleEachMessageOnceInKeyOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const (
		consumers = 8
		messages  = 20_000
		keys      = 100
		chunk     = 1000
	)
	url := pgtest.URL(t)
	newPool := func(conns int32) *pgxpool.Pool {
		cfg, err := pgxpool.ParseConfig(url)
		if err != nil {
			t.Fatal(err)
		}
		cfg.MaxConns = conns
		p, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Close)
		return p
	}
	pool := newPool(4)
	if err := dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: "shipping", Topic: "orders"}); err != nil {
		t.Fatal(err)
	}
	// id follows insert order; a key's next message can only be claimed
	// after its previous one committed, so per key id order is handling order.
	if _, err := pool.Exec(ctx, `CREATE TABLE effects (id bigint GENERATED ALWAYS AS IDENTITY, message_id uuid, key text, n int)`); err != nil {
		t.Fatal(err)
	}
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		v, err := postbox.Decode[struct{ N int }](d.Payload)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO effects (message_id, key, n) VALUES ($1, $2, $3)`, d.ID, d.Key, v.N)
		return err
	})

	cs := make([]*inbox.Consumer, consumers)
	stops := make([]func() error, consumers)
	for i := range cs {
		// 8 consumers x 12 = 96 deliveries in flight at most, under the 100
		// keys that can be in flight at once.
		cs[i] = newConsumer(t, newPool(3), inbox.Config{Subscriber: "shipping", Handler: h, Concurrency: 1, BatchSize: 12, PollInterval: 10 * time.Millisecond})
		stops[i], _ = run(t, cs[i])
	}
	rctx, stopRelay := context.WithCancel(ctx)
	defer stopRelay()
	r, err := relay.New(pool, relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	relayDone := make(chan error, 1)
	go func() { relayDone <- r.Run(rctx) }()

	// Message i has key i%keys and is that key's (i/keys)th.
	for start := 0; start < messages; start += chunk {
		msgs := make([]*postbox.Message, chunk)
		for j := range msgs {
			i := start + j
			msgs[j] = &postbox.Message{Topic: "orders", Key: fmt.Sprintf("k%03d", i%keys), Payload: []byte(fmt.Sprintf(`{"n":%d}`, i/keys))}
		}
		if err := outbox.PublishBatch(ctx, pool, msgs); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "all messages handled", func() (bool, error) {
		n, err := count(ctx, pool, `SELECT (SELECT count(*) FROM postbox.outbox) + (`+pgtest.PendingSQL+`)`)
		return n == 0, err
	})
	stopRelay()
	if err := <-relayDone; err != nil {
		t.Fatal(err)
	}
	var handled, busy int64
	for i, c := range cs {
		if err := stops[i](); err != nil {
			t.Fatal(err)
		}
		s := c.Stats()
		if s.Failed != 0 || s.Dead != 0 || s.Duplicates != 0 {
			t.Fatalf("consumer %d stats = %+v, want no failure and no duplicate", i, s)
		}
		handled += s.Handled
		if s.Handled > 0 {
			busy++
		}
	}
	if handled != messages {
		t.Fatalf("consumers handled %d, want %d", handled, messages)
	}
	if busy < 2 {
		t.Fatalf("only %d of %d consumers handled anything", busy, consumers)
	}
	if got := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM effects`); got != messages {
		t.Fatalf("effects = %d, want %d", got, messages)
	}
	if got := pgtest.Count(t, ctx, pool, `SELECT count(DISTINCT message_id) FROM effects`); got != messages {
		t.Fatalf("distinct effects = %d, want %d", got, messages)
	}
	// Per key: the first effect is message 0 and each next one is the next.
	bad := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM (
		SELECT n, lag(n) OVER (PARTITION BY key ORDER BY id) AS prev FROM effects) x
		WHERE n <> coalesce(prev + 1, 0)`)
	if bad != 0 {
		t.Fatalf("%d effects out of key order", bad)
	}
}
