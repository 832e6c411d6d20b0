package inbox_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
)

// Regression tests for failures that used to stall a subscriber or break
// per-key order. Each drives RunOnce a bounded number of times and checks
// the end state, so a stall fails the test instead of hanging it.

var quickRetry = dispatcher.Options{MaxAttempts: 2, Backoff: dispatcher.Backoff{Initial: time.Millisecond, Max: time.Millisecond}}

// runUntil calls RunOnce until cond holds, at most n times.
func runUntil(t *testing.T, c *inbox.Consumer, n int, cond func() bool) {
	t.Helper()
	for range n {
		if cond() {
			return
		}
		_, _ = c.RunOnce(context.Background()) // errors are what these tests provoke
		time.Sleep(2 * time.Millisecond)       // let a 1ms backoff pass; not synchronization
	}
	if !cond() {
		t.Fatalf("condition not reached after %d batches", n)
	}
}

// A handler whose effects violate a deferred constraint makes COMMIT fail.
// The batch must not be claimed again and again: the culprit is found and
// dead-lettered, the others are handled.
func TestRefusedCommitFindsTheCulprit(t *testing.T) {
	t.Parallel()
	b := setup(t, 5, 5, quickRetry)
	b.exec(t, `CREATE TABLE parent (id int PRIMARY KEY);
		CREATE TABLE child (ref int REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED)`)
	c := b.consumer(t, inbox.Config{BatchSize: 10, NoListen: true,
		Handler: inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
			if payloadN(d) == 2 {
				_, err := tx.Exec(ctx, `INSERT INTO child VALUES (999)`)
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO effects (message_id, n) VALUES ($1, $2)`, d.ID, payloadN(d))
			return err
		})})
	runUntil(t, c, 40, func() bool {
		return b.count(t, pgtest.PendingSQL) == 0
	})
	if got := b.effects(t); got != 4 {
		t.Fatalf("effects = %d, want the 4 innocent messages", got)
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.dead_letters WHERE last_error LIKE '%commit refused%'`); got != 1 {
		t.Fatalf("dead letters blaming the commit = %d, want 1", got)
	}
}

// A handler that swallows the error of a query its timeout cut off returns
// nil over a closed connection; one that leaves rows open returns nil over
// a busy one. Either way its attempt must count, so it ends dead instead of
// stalling every batch it is claimed in.
func TestHandlerLeavingConnectionUnusableIsBlamed(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		timeout time.Duration
		handle  func(ctx context.Context, tx pgx.Tx) error
	}{
		"swallowed timeout": {200 * time.Millisecond, func(ctx context.Context, tx pgx.Tx) error {
			_, _ = tx.Exec(ctx, `SELECT pg_sleep(5)`)
			return nil
		}},
		"rows left open": {0, func(ctx context.Context, tx pgx.Tx) error {
			rows, err := tx.Query(ctx, `SELECT generate_series(1, 10)`)
			if err != nil {
				return err
			}
			rows.Next()
			return nil
		}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, 3, 3, quickRetry)
			c := b.consumer(t, inbox.Config{BatchSize: 10, NoListen: true, HandlerTimeout: tc.timeout,
				Handler: inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
					if payloadN(d) == 1 {
						return tc.handle(ctx, tx)
					}
					_, err := tx.Exec(ctx, `INSERT INTO effects (message_id, n) VALUES ($1, $2)`, d.ID, payloadN(d))
					return err
				})})
			runUntil(t, c, 30, func() bool {
				return b.count(t, pgtest.PendingSQL) == 0
			})
			if got := b.count(t, `SELECT count(*) FROM postbox.dead_letters WHERE attempts = 2`); got != 1 {
				t.Fatalf("dead after 2 attempts = %d, want 1", got)
			}
			if got := b.effects(t); got != 2 {
				t.Fatalf("effects = %d, want 2", got)
			}
		})
	}
}

// A replayed dead letter never runs beside a message of its key that is in
// flight: the replay waits for the batch that holds the key's partition,
// and meanwhile another consumer claims nothing of the key.
func TestReplayedLetterWaitsBehindItsKey(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, 3, 1, dispatcher.Options{}) // n = 0, 1, 2, all of one key
	kill := b.consumer(t, inbox.Config{BatchSize: 1, NoListen: true,
		Handler: inbox.HandlerFunc(func(context.Context, pgx.Tx, *inbox.Delivery) error {
			return postbox.Permanent(errors.New("bad"))
		})})
	if _, err := kill.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	entered := make(chan int, 3)
	release := make(chan struct{})
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		entered <- payloadN(d)
		<-release
		return nil
	})
	first := b.consumer(t, inbox.Config{BatchSize: 1, NoListen: true, Handler: h})
	second := b.consumer(t, inbox.Config{BatchSize: 1, NoListen: true, Handler: h})
	doneFirst := make(chan struct{})
	go func() { defer close(doneFirst); first.RunOnce(ctx) }()
	if n := <-entered; n != 1 {
		close(release)
		t.Fatalf("first handled n = %d, want 1", n)
	}
	replayed := make(chan int, 1)
	go func() {
		n, err := count(ctx, b.pool, `SELECT postbox.replay_dead_letters('work')`)
		if err != nil {
			t.Error(err)
		}
		replayed <- n
	}()
	pgtest.WaitFor(t, ctx, 10*time.Second, "the replay waiting for the batch's partition", func() bool {
		return b.count(t, `SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND wait_event = 'advisory' AND query LIKE '%replay_dead_letters%'`) == 1
	})
	doneSecond := make(chan struct{})
	go func() { defer close(doneSecond); second.RunOnce(ctx) }()
	select {
	case n := <-entered:
		close(release)
		t.Fatalf("n = %d entered while n = 1 of the same key was in flight", n)
	case <-doneSecond:
	}
	close(release)
	<-doneFirst
	if n := <-replayed; n != 1 {
		t.Fatalf("replayed %d, want 1", n)
	}
}
