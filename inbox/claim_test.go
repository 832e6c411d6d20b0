package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
)

// A hot key whose head fails (and waits an hour to be retried) holds back
// only itself: the other keys' messages, queued behind its 300 in the same
// order partitions or not, and the keyless ones are all handled while the
// hot key waits, parked, in order.
func TestFailingHotKeyHoldsBackOnlyItself(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, 300, 1, dispatcher.Options{Backoff: dispatcher.Backoff{Initial: time.Hour, Max: time.Hour}})
	var msgs []*postbox.Message
	for i := range 30 {
		msgs = append(msgs, &postbox.Message{Topic: "work", Key: fmt.Sprintf("other-%02d", i), Payload: []byte(`{"n":-1}`)})
	}
	for range 5 {
		msgs = append(msgs, &postbox.Message{Topic: "work", Payload: []byte(`{"n":-2}`)})
	}
	if err := outbox.SendBatch(ctx, b.pool, msgs); err != nil {
		t.Fatal(err)
	}
	b.drain(t)
	c := b.consumer(t, inbox.Config{BatchSize: 10, NoListen: true,
		Handler: inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
			if d.Key == "k0" {
				return errors.New("downstream of this key is down")
			}
			return recordEffect(ctx, tx, d)
		})})
	b.runUntilEmpty(t, c)
	if got := b.count(t, `SELECT count(*) FROM effects WHERE n = -1`); got != 30 {
		t.Fatalf("other keys handled = %d, want 30", got)
	}
	if got := b.count(t, `SELECT count(*) FROM effects WHERE n = -2`); got != 5 {
		t.Fatalf("keyless handled = %d, want 5", got)
	}
	if got := b.count(t, `SELECT count(*) FROM effects WHERE key = 'k0'`); got != 0 {
		t.Fatalf("handled %d messages of the failing key", got)
	}
	if d := pgtest.Depths(t, ctx, b.pool, "work"); d.Waiting != 300 || d.Ready != 0 {
		t.Fatalf("depths = %+v, want the hot key's 300 waiting", d)
	}
	if s := c.Stats(); s.Failed != 1 {
		t.Fatalf("stats = %+v, want 1 failed attempt (its head's)", s)
	}
}

// A batch takes a run of one key's deliveries and handles them in order; the
// run stops at the key's first failure, whose later deliveries wait until it
// is handled, and then go on in order.
func TestHotKeyRunStopsAtItsFirstFailure(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 10
	b := setup(t, n, 1, dispatcher.Options{Backoff: dispatcher.Backoff{Initial: time.Millisecond, Max: time.Millisecond}})
	c := b.consumer(t, inbox.Config{NoListen: true,
		Handler: inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
			if payloadN(d) == 4 && d.Attempt == 1 {
				return errors.New("try again")
			}
			return recordEffect(ctx, tx, d)
		})})
	if got, err := c.RunOnce(ctx); err != nil || got != n {
		t.Fatalf("first batch claimed %d (%v), want the run of %d", got, err, n)
	}
	if got := b.effects(t); got != 4 {
		t.Fatalf("effects after the first batch = %d, want messages 0-3", got)
	}
	if d := pgtest.Depths(t, ctx, b.pool, "work"); d.Pending() != 6 {
		t.Fatalf("depths = %+v, want 6 pending (4 and the 5 behind it)", d)
	}
	b.runUntilEmpty(t, c)
	if got := b.effects(t); got != n {
		t.Fatalf("effects = %d, want %d", got, n)
	}
	if got := b.count(t, `SELECT count(*) FROM (SELECT n, lag(n) OVER (ORDER BY at) AS prev FROM effects) e
		WHERE e.n <> coalesce(e.prev + 1, 0)`); got != 0 {
		t.Fatalf("%d deliveries of the key handled out of order", got)
	}
	if s := c.Stats(); s.Failed != 1 || s.Handled != n || s.Batches > 4 {
		t.Fatalf("stats = %+v, want %d handled in at most 4 batches after 1 failure", s, n)
	}
}

// A relay notification for one message makes one worker claim it, and
// that worker claim once more to find nothing: no herd of workers.
func TestOneNotificationWakesOneClaim(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, 0, 1, dispatcher.Options{})
	// No polling in the test's time: only the notification can wake them.
	c := b.consumer(t, inbox.Config{Handler: recordEffect, Concurrency: 4,
		PollInterval: time.Hour, MaxPollInterval: time.Hour})
	run(t, c)
	// Each worker claims once on start, and the listener's first wake-up
	// (work may have come before LISTEN) may add one: then all are idle.
	pgtest.WaitFor(t, ctx, 10*time.Second, "idle workers", func() bool {
		s := c.Stats()
		return s.Claims >= 4 && s.Claims == s.EmptyClaims
	})
	before := c.Stats().Claims
	if err := outbox.Send(ctx, b.pool, &postbox.Message{Topic: "work", Key: "k", Payload: []byte(`{"n":1}`)}); err != nil {
		t.Fatal(err)
	}
	b.drain(t) // the relay notifies after its batch commits
	pgtest.WaitFor(t, ctx, 10*time.Second, "the message handled and the worker idle again", func() bool {
		s := c.Stats()
		return s.Handled == 1 && s.Claims-s.EmptyClaims == 1 && s.Claims-before >= 2
	})
	if claims := c.Stats().Claims - before; claims > 3 {
		t.Fatalf("one notification cost %d claims, want at most 3 (its own, the one that finds nothing, and the listener's start)", claims)
	}
	if s := c.Stats(); s.ClaimTime <= 0 {
		t.Errorf("ClaimTime %s after %d claims, want their time", s.ClaimTime, s.Claims)
	}
}
