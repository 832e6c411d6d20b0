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

// A message with DeliverAt in the future is relayed at once, but its inbox
// row becomes claimable (available_at <= now()) only at DeliverAt. A sibling
// without DeliverAt is claimable at once, so the claim query can see rows.
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

	const claimable = `SELECT message_id FROM postbox.inbox
		WHERE subscriber = 'reminders' AND status = 'pending' AND available_at <= now()
		ORDER BY available_at, seq`
	ready := func() []string {
		rows, err := pool.Query(ctx, claimable)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var ids []string
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return ids
	}
	got := ready()
	if answered := time.Now(); !answered.Before(deliverAt) {
		t.Fatalf("the test was too slow to look before DeliverAt (%s late)", answered.Sub(deliverAt))
	}
	if len(got) != 1 || got[0] != now.ID.String() {
		t.Fatalf("claimable before DeliverAt = %v, want only %s", got, now.ID)
	}
	var waiting int
	if err := pool.QueryRow(ctx, `SELECT waiting FROM postbox.queue_depths WHERE subscriber = 'reminders'`).Scan(&waiting); err != nil {
		t.Fatal(err)
	}
	if waiting != 1 {
		t.Errorf("queue_depths.waiting = %d before DeliverAt, want 1", waiting)
	}

	waitFor(t, ctx, 10*time.Second, "the delayed message to become claimable", func() bool {
		got = ready()
		// Database and test share this machine's clock.
		if answered := time.Now(); len(got) == 2 && answered.Before(deliverAt) {
			t.Fatalf("delayed message claimable at %s, before DeliverAt %s", answered, deliverAt)
		}
		return len(got) == 2
	})
	if got[1] != later.ID.String() {
		t.Errorf("claim order after DeliverAt = %v, want %s last", got, later.ID)
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

	waitFor(t, ctx, 10*time.Second, "the undelayed message to be handled", func() bool {
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
	waitFor(t, ctx, 10*time.Second, "the delayed message to be handled", func() bool {
		_, ok := handled(later.ID)
		return ok
	})
	if at, _ := handled(later.ID); at.Before(deliverAt) {
		t.Errorf("delayed message handled at %s, before DeliverAt %s", at.Format(time.RFC3339Nano), deliverAt.Format(time.RFC3339Nano))
	}
	// The handler runs before its batch commits; wait for the commit.
	waitFor(t, ctx, 10*time.Second, "both messages marked processed", func() bool {
		return count(t, ctx, pool, `SELECT count(*) FROM postbox.processed WHERE subscriber = 'reminders'`) == 2
	})
}
