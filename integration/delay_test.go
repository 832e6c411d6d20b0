package integration

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
)

// A message with DeliverAt in the future is relayed at once, but its
// delivery (available_at = DeliverAt) is ready only at DeliverAt, waiting
// until then in postbox.queue_depths. A sibling without DeliverAt is ready at
// once, so the test would notice a view that counts nothing.
func TestDeliverAtDelaysHandling(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 30*time.Second)
	pool := pgtest.Pool(t, 4)
	if err := dispatcher.DeclareQueue(ctx, pool, "reminders", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}

	// Nanoseconds on purpose: PostgreSQL keeps microseconds. Round(0) drops
	// the monotonic reading, so comparisons below use the wall clock, as
	// PostgreSQL's now() does.
	deliverAt := time.Now().Round(0).Add(2500*time.Millisecond + 123*time.Nanosecond)
	later := &postbox.Message{Topic: "reminders", Key: "cart-1", Payload: []byte(`{"remind":true}`), DeliverAt: deliverAt}
	now := &postbox.Message{Topic: "reminders", Key: "cart-2", Payload: []byte(`{"remind":false}`)}
	for _, m := range []*postbox.Message{later, now} {
		if err := outbox.Send(ctx, pool, m); err != nil {
			t.Fatal(err)
		}
	}
	if res := drain(t, ctx, pool); res.Claimed != 2 || res.Delivered != 2 {
		t.Fatalf("drain = %+v, want both messages moved at once", res)
	}

	var availableAt time.Time
	if err := pool.QueryRow(ctx, `SELECT available_at FROM postbox.inbox WHERE subscriber = 'reminders' AND message_id = $1`, later.ID).Scan(&availableAt); err != nil {
		t.Fatal(err)
	}
	if want := deliverAt.Truncate(time.Microsecond); !availableAt.Equal(want) {
		t.Fatalf("available_at = %s, want DeliverAt %s to the microsecond", availableAt.Format(time.RFC3339Nano), want.Format(time.RFC3339Nano))
	}

	// Before DeliverAt the delayed delivery waits and its sibling is ready;
	// the view and the test share this machine's clock with the database.
	depths := func() pgtest.Depth { return pgtest.Depths(t, ctx, pool, "reminders") }
	got := depths()
	if answered := time.Now(); !answered.Before(deliverAt) {
		t.Fatalf("the test was too slow to look before DeliverAt (%s late)", answered.Sub(deliverAt))
	}
	if got != (pgtest.Depth{Ready: 1, Waiting: 1}) {
		t.Fatalf("reminders before DeliverAt: %+v, want 1 ready and the delayed one waiting", got)
	}
	pgtest.WaitFor(t, ctx, 10*time.Second, "the delayed message to become ready", func() bool {
		got = depths()
		if answered := time.Now(); got.Ready == 2 && answered.Before(deliverAt) {
			t.Fatalf("delayed message ready at %s, before DeliverAt %s", answered, deliverAt)
		}
		return got.Ready == 2
	})
	if got != (pgtest.Depth{Ready: 2}) {
		t.Errorf("reminders after DeliverAt: %+v, want both ready", got)
	}
}

// A consumer does not handle a delayed message before DeliverAt, and does
// handle it after; a message without DeliverAt sent alongside is handled at
// once.
func TestConsumerWaitsForDeliverAt(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 30*time.Second)
	pool := pgtest.Pool(t, 8)
	if err := dispatcher.DeclareQueue(ctx, pool, "reminders", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	deliverAt := time.Now().Round(0).Add(2 * time.Second) // wall clock, as now()
	later := &postbox.Message{Topic: "reminders", Key: "cart-1", Payload: []byte(`{}`), DeliverAt: deliverAt}
	now := &postbox.Message{Topic: "reminders", Key: "cart-2", Payload: []byte(`{}`)}
	for _, m := range []*postbox.Message{later, now} {
		if err := outbox.Send(ctx, pool, m); err != nil {
			t.Fatal(err)
		}
	}
	drain(t, ctx, pool)

	var mu sync.Mutex
	handledAt := map[uuid.UUID]time.Time{}
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		handledAt[d.ID] = time.Now()
		return nil
	})
	handled := func(id uuid.UUID) (time.Time, bool) {
		mu.Lock()
		defer mu.Unlock()
		at, ok := handledAt[id]
		return at, ok
	}
	c, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: "reminders", Handler: h, PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}()

	pgtest.WaitFor(t, ctx, 10*time.Second, "the undelayed message to be handled", func() bool {
		_, ok := handled(now.ID)
		return ok
	})
	// The consumer has been polling all along; the delayed message must
	// still be waiting.
	if _, ok := handled(later.ID); ok {
		t.Fatalf("delayed message handled before DeliverAt %s", deliverAt)
	}
	if !time.Now().Before(deliverAt) {
		t.Fatalf("the test was too slow to look before DeliverAt")
	}
	pgtest.WaitFor(t, ctx, 10*time.Second, "the delayed message to be handled", func() bool {
		_, ok := handled(later.ID)
		return ok
	})
	if at, _ := handled(later.ID); at.Before(deliverAt) {
		t.Errorf("delayed message handled at %s, before DeliverAt %s", at.Format(time.RFC3339Nano), deliverAt.Format(time.RFC3339Nano))
	}
	// The handler runs before its batch commits; wait for the commit.
	pgtest.WaitFor(t, ctx, 10*time.Second, "both messages marked processed", func() bool {
		return pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.processed WHERE subscriber = 'reminders'`) == 2
	})
}
