package integration

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

// A filter that names a SQL/JSON path variable can never match (nothing
// binds it): Subscribe refuses it, and one written past the API (plain SQL)
// matches nothing instead of failing the relay statement for every message
// of its topic. The filter fuzz target found it.
func TestFilterWithAPathVariable(t *testing.T) {
	ctx := testContext(t, time.Minute)
	pool := pgtest.Pool(t, 4)
	const filter = `$.total ? (@ > $limit)`
	err := dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: "bad", Topic: "orders", Filter: filter})
	if !errors.Is(err, postbox.ErrInvalid) {
		t.Fatalf("Subscribe with %s: %v, want ErrInvalid", filter, err)
	}
	subscribe(t, ctx, pool, "good", "orders", "")
	subscribe(t, ctx, pool, "bad", "orders", "")
	if _, err := pool.Exec(ctx, `UPDATE postbox.subscriptions SET filter = $1::jsonpath WHERE subscriber = 'bad'`, filter); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := outbox.Publish(ctx, pool, &postbox.Message{Topic: "orders", Payload: fmt.Appendf(nil, `{"total": %d}`, i)}); err != nil {
			t.Fatal(err)
		}
	}
	r, err := relay.New(pool, relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.Drain(ctx)
	if err != nil {
		t.Fatalf("relay: %v", err)
	}
	if res.Quarantined != 0 {
		t.Errorf("%d messages quarantined, want none", res.Quarantined)
	}
	if n := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.inbox WHERE subscriber = 'good'`); n != 5 {
		t.Errorf("good got %d deliveries, want 5", n)
	}
	if n := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.inbox WHERE subscriber = 'bad'`); n != 0 {
		t.Errorf("bad got %d deliveries, want none", n)
	}
}
