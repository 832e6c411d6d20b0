package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
)

// Contract 1, atomic publish: a message published in a transaction that rolls
// back is never delivered, and the relay does not see one whose transaction
// is still open. A committed sibling is delivered, so the test would notice
// a relay that delivers nothing at all.
func TestRolledBackPublishIsNeverDelivered(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 30*time.Second)
	pool := pgtest.Pool(t, 4)
	subscribe(t, ctx, pool, "inventory", "order.created", "")

	rolledBack := &postbox.Message{Topic: "order.created", Key: "order-1", Payload: []byte(`{"order":1}`)}
	committed := &postbox.Message{Topic: "order.created", Key: "order-2", Payload: []byte(`{"order":2}`)}

	open, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer open.Rollback(ctx)
	if err := outbox.Publish(ctx, open, rolledBack); err != nil {
		t.Fatal(err)
	}
	if n := pgtest.Count(t, ctx, open, `SELECT count(*) FROM postbox.outbox WHERE message_id = $1`, rolledBack.ID); n != 1 {
		t.Fatalf("inside its transaction the message has %d outbox rows, want 1", n)
	}

	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := outbox.Publish(ctx, tx, committed); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	// The relay runs while the first transaction is still open: it moves the
	// committed message only.
	if res := drain(t, ctx, pool); res.Claimed != 1 || res.Delivered != 1 {
		t.Fatalf("drain with a transaction open = %+v, want 1 claimed and 1 delivered", res)
	}
	if err := open.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if res := drain(t, ctx, pool); res.Claimed != 0 {
		t.Fatalf("drain after the rollback = %+v, want nothing claimed", res)
	}

	if n := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.inbox WHERE message_id = $1`, rolledBack.ID); n != 0 {
		t.Errorf("rolled-back message has %d inbox rows, want 0", n)
	}
	if n := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.inbox WHERE message_id = $1 AND subscriber = 'inventory'`, committed.ID); n != 1 {
		t.Errorf("committed message has %d inbox rows for inventory, want 1", n)
	}
	if n := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.outbox`); n != 0 {
		t.Errorf("outbox holds %d rows after draining, want 0", n)
	}
}

// Routing: a queue send is delivered once, to the queue; a topic message is
// delivered once to every subscription that matches it — exact, wildcard,
// and filtered on the payload.
func TestQueueSendDeliversOnceAndTopicFansOut(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 30*time.Second)
	pool := pgtest.Pool(t, 4)

	if err := dispatcher.DeclareQueue(ctx, pool, "billing", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	subscribe(t, ctx, pool, "inventory", "order.created", "")
	subscribe(t, ctx, pool, "audit", "order.#", "")
	subscribe(t, ctx, pool, "big-orders", "order.created", `$.totalAmount ? (@ >= 10000)`)

	send := &postbox.Message{Topic: "billing", Key: "order-1", Payload: []byte(`{"totalAmount":25000}`)}
	if err := outbox.Send(ctx, pool, send); err != nil {
		t.Fatal(err)
	}
	big := &postbox.Message{Topic: "order.created", Key: "order-1", Payload: []byte(`{"totalAmount":25000}`)}
	edge := &postbox.Message{Topic: "order.created", Key: "order-2", Payload: []byte(`{"totalAmount":10000}`)}
	small := &postbox.Message{Topic: "order.created", Key: "order-3", Payload: []byte(`{"totalAmount":9999.99}`)}
	noAmount := &postbox.Message{Topic: "order.created", Key: "order-4", Payload: []byte(`{"note":"free"}`)}
	notJSON := &postbox.Message{Topic: "order.created", Key: "order-5", Payload: []byte(`totalAmount=99999`)}
	shipped := &postbox.Message{Topic: "order.shipped.eu", Key: "order-1", Payload: []byte(`{"totalAmount":25000}`)}
	other := &postbox.Message{Topic: "invoice.created", Key: "invoice-1", Payload: []byte(`{"totalAmount":25000}`)}
	for _, m := range []*postbox.Message{big, edge, small, noAmount, notJSON, shipped, other} {
		if err := outbox.Publish(ctx, pool, m); err != nil {
			t.Fatal(err)
		}
	}

	res := drain(t, ctx, pool)
	// Deliveries: send 1; big 3; edge 3; small, noAmount and notJSON 2 each;
	// shipped 1 (audit); other 0.
	if res.Claimed != 8 || res.Delivered != 14 || res.Dropped != 1 || res.NoRoute != 0 {
		t.Errorf("drain = %+v, want 8 claimed, 14 delivered, 1 dropped", res)
	}

	want := map[uuid.UUID][]string{
		send.ID:     {"billing"},
		big.ID:      {"audit", "big-orders", "inventory"},
		edge.ID:     {"audit", "big-orders", "inventory"},
		small.ID:    {"audit", "inventory"},
		noAmount.ID: {"audit", "inventory"},
		notJSON.ID:  {"audit", "inventory"},
		shipped.ID:  {"audit"},
		other.ID:    nil,
	}
	rows, err := pool.Query(ctx, `SELECT message_id, subscriber FROM postbox.inbox ORDER BY message_id, subscriber`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[uuid.UUID][]string{}
	for rows.Next() {
		var id uuid.UUID
		var sub string
		if err := rows.Scan(&id, &sub); err != nil {
			t.Fatal(err)
		}
		got[id] = append(got[id], sub)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for id, subs := range want {
		if fmt.Sprint(got[id]) != fmt.Sprint(subs) {
			t.Errorf("message %s delivered to %v, want %v", id, got[id], subs)
		}
	}
	if len(got) != 7 {
		t.Errorf("inbox holds %d distinct messages, want 7: %v", len(got), got)
	}
	// Every delivery is pending: ready for its subscriber's consumers.
	for sub, n := range map[string]int{"billing": 1, "inventory": 5, "audit": 6, "big-orders": 2} {
		t.Run(sub, func(t *testing.T) {
			if d := pgtest.Depths(t, ctx, pool, sub); d != (pgtest.Depth{Ready: n}) {
				t.Errorf("%s: %+v, want %d ready", sub, d, n)
			}
		})
	}
	// And each carries the message as published.
	var payload []byte
	var topic, key string
	err = pool.QueryRow(ctx, `SELECT payload, topic, key FROM postbox.inbox WHERE subscriber = 'big-orders' AND message_id = $1`, big.ID).
		Scan(&payload, &topic, &key)
	if err != nil {
		t.Fatal(err)
	}
	if string(payload) != string(big.Payload) || topic != big.Topic || key != big.Key {
		t.Errorf("big-orders got payload %q topic %q key %q, want %q %q %q", payload, topic, key, big.Payload, big.Topic, big.Key)
	}
}
