package relay_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

// A payload nested deeper than PostgreSQL's stack allows, on a topic with a
// filtered subscription, matches no filter; it must not fail the relay
// statement, which would stop every relay at this row.
func TestDeeplyNestedPayloadDoesNotStopTheRelay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	for _, s := range []dispatcher.Subscription{
		{Subscriber: "filtered", Topic: "t", Filter: "$.x == 1"},
		{Subscriber: "other", Topic: "u"},
	} {
		if err := dispatcher.Subscribe(ctx, pool, s); err != nil {
			t.Fatal(err)
		}
	}
	deep := strings.Repeat("[", 100_000) + strings.Repeat("]", 100_000)
	for _, m := range []*postbox.Message{{Topic: "t", Payload: []byte(deep)}, {Topic: "u", Payload: []byte(`{}`)}} {
		if err := outbox.Publish(ctx, pool, m); err != nil {
			t.Fatal(err)
		}
	}
	r, err := relay.New(pool, relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.Drain(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Claimed != 2 || res.Delivered != 1 || res.Dropped != 1 {
		t.Fatalf("drain = %+v, want 2 claimed, 1 delivered (to other), 1 dropped", res)
	}
}

// Reusing a *Message publishes one ID twice: the copies are dropped as
// duplicates, and counted so the drop is visible. Within one batch it is
// rejected outright.
func TestReusedMessageIsCountedOrRejected(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	if err := dispatcher.DeclareQueue(ctx, pool, "work", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	msg := &postbox.Message{Topic: "work"}
	for range 3 {
		if err := outbox.Send(ctx, pool, msg); err != nil {
			t.Fatal(err)
		}
	}
	r, err := relay.New(pool, relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.Drain(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Delivered != 1 || res.Duplicates != 2 || r.Stats().Duplicates != 2 {
		t.Fatalf("drain = %+v, stats = %+v; want 1 delivered and 2 duplicates", res, r.Stats())
	}
	again := &postbox.Message{Topic: "work"}
	err = outbox.SendBatch(ctx, pool, []*postbox.Message{again, {Topic: "work"}, again})
	if !errors.Is(err, postbox.ErrInvalid) {
		t.Fatalf("batch with one message twice: err = %v, want ErrInvalid", err)
	}
}

// Replay and purge require a subscriber: NULL touches nothing, rather than
// every subscriber's dead letters.
func TestNullSubscriberReplaysAndPurgesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	for _, q := range []string{"nowhere-a", "nowhere-b"} {
		if err := outbox.Send(ctx, pool, &postbox.Message{Topic: q}); err != nil {
			t.Fatal(err)
		}
	}
	r, err := relay.New(pool, relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	var replayed, purged, dead int
	if err := pool.QueryRow(ctx, `SELECT postbox.replay_dead_letters(NULL), postbox.purge_dead_letters(NULL),
		(SELECT count(*) FROM postbox.dead_letters)`).Scan(&replayed, &purged, &dead); err != nil {
		t.Fatal(err)
	}
	if replayed != 0 || purged != 0 || dead != 2 {
		t.Fatalf("replayed %d, purged %d, %d dead left; want 0, 0, 2", replayed, purged, dead)
	}
}

// A key longer than the index can hold is refused at the API, whatever
// MaxKeyBytes says, instead of failing every relay batch later.
func TestKeyCeiling(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	generous := outbox.Outbox{Limits: postbox.Limits{MaxKeyBytes: 10_000}}
	err := generous.Publish(ctx, pool, &postbox.Message{Topic: "t", Key: strings.Repeat("k", postbox.MaxKeyBytesLimit+1)})
	if !errors.Is(err, postbox.ErrInvalid) {
		t.Fatalf("key over the ceiling: err = %v, want ErrInvalid", err)
	}
	if err := generous.Publish(ctx, pool, &postbox.Message{Topic: "t", Key: strings.Repeat("k", postbox.MaxKeyBytesLimit)}); err != nil {
		t.Fatal(err)
	}
	if err := dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: "s", Topic: "t"}); err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(pool, relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := r.Drain(ctx); err != nil || res.Delivered != 1 {
		t.Fatalf("drain = %+v, %v; want the longest allowed key delivered", res, err)
	}
}
