package inbox_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
)

func TestConsumerHandlesEachMessageOnceInKeyOrder(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const n = 2000
	b := setup(t, n, 20, dispatcher.Options{})

	done := make(chan error, 2)
	for range 2 {
		c := b.consumer(t, inbox.Config{Handler: recordEffect, Concurrency: 3})
		go func() { done <- c.Run(ctx) }()
	}
	waitFor(t, "all effects", func() (bool, error) {
		got, err := count(ctx, b.pool, pgtest.PendingSQL)
		return got == 0, err
	})
	cancel()
	for range 2 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if got := b.effects(t); got != n {
		t.Fatalf("effects = %d, want %d", got, n)
	}
	if got := b.count(t, `SELECT count(DISTINCT message_id) FROM effects`); got != n {
		t.Fatalf("distinct effects = %d, want %d", got, n)
	}
	// Per key, effects were written in publish order (n ascending).
	if bad := b.count(t, `SELECT count(*) FROM (
		SELECT n < lag(n) OVER (PARTITION BY key ORDER BY at) AS backwards FROM effects) x WHERE backwards`); bad != 0 {
		t.Fatalf("%d effects out of key order", bad)
	}
}

func TestFailingMessageIsRetriedThenDeadLettered(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, 1, 1, dispatcher.Options{MaxAttempts: 3, Backoff: dispatcher.Backoff{Initial: time.Millisecond, Max: 5 * time.Millisecond}})
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		if _, err := tx.Exec(ctx, `INSERT INTO effects (message_id) VALUES ($1)`, d.ID); err != nil {
			return err
		}
		return errors.New("boom")
	})
	c := b.consumer(t, inbox.Config{Handler: h})
	waitFor(t, "dead letter", func() (bool, error) {
		if _, err := c.RunOnce(ctx); err != nil {
			return false, err
		}
		n, err := count(ctx, b.pool, `SELECT count(*) FROM postbox.dead_letters WHERE attempts = 3 AND headers->>'x-retry-count' = '3' AND headers->>'x-original-error' = 'boom'`)
		return n == 1, err
	})
	if got := b.effects(t); got != 0 {
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
	b := setup(t, n, 1, dispatcher.Options{})
	c := b.consumer(t, inbox.Config{Handler: recordEffect, Concurrency: 1, PollInterval: time.Hour, NoListen: true})
	run(t, c)
	// The stats count a batch after its commit returns, a moment after
	// its deliveries stop being pending: wait for both.
	waitFor(t, "all messages of the key handled", func() (bool, error) {
		left, err := count(ctx, b.pool, pgtest.PendingSQL)
		return left == 0 && c.Stats().Handled >= n, err
	})
	if s := c.Stats(); s.Handled != n || s.Batches != 1 {
		t.Fatalf("stats = %+v, want %d handled in 1 batch (one key's run)", s, n)
	}
	if got := b.count(t, `SELECT count(*) FROM (SELECT n, lag(n) OVER (ORDER BY at) AS prev FROM effects) e
		WHERE e.prev >= e.n`); got != 0 {
		t.Fatalf("%d deliveries of the key handled out of order", got)
	}
}
