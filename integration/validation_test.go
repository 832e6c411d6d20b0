package integration

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
)

// Bad input is rejected with postbox.ErrInvalid before anything is written:
// after every rejected call the outbox, subscriptions and subscribers are
// still empty.
func TestInvalidInputIsRejectedBeforeAnythingIsWritten(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 30*time.Second)
	pool := pgtest.Pool(t, 4)

	tooManyHeaders := map[string]string{}
	for i := range postbox.DefaultMaxHeaders + 1 {
		tooManyHeaders[fmt.Sprintf("h%d", i)] = "v"
	}
	msg := func(edit func(m *postbox.Message)) *postbox.Message {
		m := &postbox.Message{Topic: "order.created", Key: "order-1", Payload: []byte(`{}`)}
		edit(m)
		return m
	}
	publish := func(m *postbox.Message) func() error {
		return func() error { return outbox.Publish(ctx, pool, m) }
	}
	small := outbox.Outbox{Limits: postbox.Limits{MaxPayloadBytes: 100}}
	subscribeTo := func(s dispatcher.Subscription) func() error {
		return func() error { return dispatcher.Subscribe(ctx, pool, s) }
	}

	cases := []struct {
		name  string
		field string // the *postbox.ValidationError's Field: the input's Go path
		call  func() error
	}{
		{"upper-case topic", "Message.Topic", publish(msg(func(m *postbox.Message) { m.Topic = "Order.created" }))},
		{"empty topic", "Message.Topic", publish(msg(func(m *postbox.Message) { m.Topic = "" }))},
		{"topic with a space", "Message.Topic", publish(msg(func(m *postbox.Message) { m.Topic = "order created" }))},
		{"topic with a wildcard", "Message.Topic", publish(msg(func(m *postbox.Message) { m.Topic = "order.*" }))},
		{"topic too long", "Message.Topic", publish(msg(func(m *postbox.Message) { m.Topic = strings.Repeat("a", 201) }))},
		{"topic with an empty segment", "Message.Topic", publish(msg(func(m *postbox.Message) { m.Topic = "order..created" }))},
		{"topic ending in a dot", "Message.Topic", publish(msg(func(m *postbox.Message) { m.Topic = "order." }))},
		{"queue name with an empty segment", "Message.Topic", func() error {
			return outbox.Send(ctx, pool, msg(func(m *postbox.Message) { m.Topic = "billing..eu" }))
		}},
		{"queue name with a slash", "Message.Topic", func() error {
			return outbox.Send(ctx, pool, msg(func(m *postbox.Message) { m.Topic = "billing/eu" }))
		}},
		{"payload over 1 MiB", "Message.Payload", publish(msg(func(m *postbox.Message) { m.Payload = make([]byte, postbox.DefaultMaxPayloadBytes+1) }))},
		{"payload over a custom limit", "Message.Payload", func() error {
			return small.Publish(ctx, pool, msg(func(m *postbox.Message) { m.Payload = make([]byte, 101) }))
		}},
		{"send over a custom limit", "Message.Payload", func() error {
			return small.Send(ctx, pool, msg(func(m *postbox.Message) { m.Topic = "billing"; m.Payload = make([]byte, 101) }))
		}},
		{"65 headers", "Message.Headers", publish(msg(func(m *postbox.Message) { m.Headers = tooManyHeaders }))},
		{"header name with a space", "Message.Headers", publish(msg(func(m *postbox.Message) { m.Headers = map[string]string{"bad name": "v"} }))},
		{"header name with a colon", "Message.Headers", publish(msg(func(m *postbox.Message) { m.Headers = map[string]string{"x:y": "v"} }))},
		{"empty header name", "Message.Headers", publish(msg(func(m *postbox.Message) { m.Headers = map[string]string{"": "v"} }))},
		{"non-ASCII header name", "Message.Headers", publish(msg(func(m *postbox.Message) { m.Headers = map[string]string{"größe": "v"} }))},
		{"NUL in key", "Message.Key", publish(msg(func(m *postbox.Message) { m.Key = "order\x00-1" }))},
		{"NUL in header value", `Message.Headers["trace"]`, publish(msg(func(m *postbox.Message) { m.Headers = map[string]string{"trace": "a\x00b"} }))},
		{"invalid UTF-8 key", "Message.Key", publish(msg(func(m *postbox.Message) { m.Key = "order-\xff" }))},
		{"invalid UTF-8 type", "Message.Type", publish(msg(func(m *postbox.Message) { m.Type = "order.\xc3\x28" }))},
		{"invalid UTF-8 header value", `Message.Headers["trace"]`, publish(msg(func(m *postbox.Message) { m.Headers = map[string]string{"trace": "\xed\xa0\x80"} }))},
		{"key too long", "Message.Key", publish(msg(func(m *postbox.Message) { m.Key = strings.Repeat("k", postbox.DefaultMaxKeyBytes+1) }))},
		{"nil message", "msg", publish(nil)},
		{"batch with one bad message", "msgs[2].Key", func() error {
			good := func(*postbox.Message) {}
			bad := msg(func(m *postbox.Message) { m.Key = "\xff" })
			return outbox.PublishBatch(ctx, pool, []*postbox.Message{msg(good), msg(good), bad})
		}},
		{"malformed filter", "Subscription.Filter", subscribeTo(dispatcher.Subscription{Subscriber: "big-orders", Topic: "order.created", Filter: "$.a ? ("})},
		{"filter that is not a path", "Subscription.Filter", subscribeTo(dispatcher.Subscription{Subscriber: "big-orders", Topic: "order.created", Filter: "totalAmount > 10"})},
		{"pattern order.**", "Subscription.Topic", subscribeTo(dispatcher.Subscription{Subscriber: "audit", Topic: "order.**"})},
		{"pattern Order", "Subscription.Topic", subscribeTo(dispatcher.Subscription{Subscriber: "audit", Topic: "Order"})},
		{"pattern a..b", "Subscription.Topic", subscribeTo(dispatcher.Subscription{Subscriber: "audit", Topic: "a..b"})},
		{"pattern with a trailing dot", "Subscription.Topic", subscribeTo(dispatcher.Subscription{Subscriber: "audit", Topic: "order."})},
		{"pattern with a partial wildcard", "Subscription.Topic", subscribeTo(dispatcher.Subscription{Subscriber: "audit", Topic: "order.cre*"})},
		{"empty pattern", "Subscription.Topic", subscribeTo(dispatcher.Subscription{Subscriber: "audit", Topic: ""})},
		{"upper-case subscriber", "Subscription.Subscriber", subscribeTo(dispatcher.Subscription{Subscriber: "Audit", Topic: "order.created"})},
		{"queue name with a space", "name", func() error { return dispatcher.DeclareQueue(ctx, pool, "my queue", dispatcher.Options{}) }},
		{"too many partitions", "Options.Partitions", func() error {
			return dispatcher.DeclareQueue(ctx, pool, "billing", dispatcher.Options{Partitions: 4097})
		}},
		{"multiplier below 1", "Options.Backoff.Multiplier", func() error {
			return dispatcher.DeclareSubscriber(ctx, pool, "audit", dispatcher.Options{Backoff: dispatcher.Backoff{Multiplier: 0.5}})
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			checkInvalid(t, c.name, c.call(), c.field)
			if n := written(t, pool); n != "0/0/0" {
				t.Fatalf("%s: outbox/subscriptions/subscribers rows = %s after the rejected call, want 0/0/0", c.name, n)
			}
		})
	}

	// Limits are limits, not off by one: exactly 1 MiB, 64 headers and a
	// payload at a custom limit are accepted.
	atLimit := msg(func(m *postbox.Message) {
		m.Payload = make([]byte, postbox.DefaultMaxPayloadBytes)
		m.Headers = map[string]string{}
		for i := range postbox.DefaultMaxHeaders {
			m.Headers[fmt.Sprintf("h%d", i)] = "v"
		}
	})
	if err := outbox.Publish(ctx, pool, atLimit); err != nil {
		t.Errorf("1 MiB payload with 64 headers: %v", err)
	}
	if err := small.Publish(ctx, pool, msg(func(m *postbox.Message) { m.Payload = make([]byte, 100) })); err != nil {
		t.Errorf("payload at a custom limit: %v", err)
	}
	if n := written(t, pool); n != "2/0/0" {
		t.Errorf("rows = %s, want 2/0/0", n)
	}
}

// checkInvalid fails t unless err is a *postbox.ValidationError for field,
// returned as it is (not wrapped), so its text carries one "postbox: "
// prefix and errors.Is(err, postbox.ErrInvalid) holds.
func checkInvalid(t *testing.T, name string, err error, field string) {
	t.Helper()
	ve, ok := err.(*postbox.ValidationError)
	switch {
	case !errors.Is(err, postbox.ErrInvalid):
		t.Errorf("%s: err = %v, want errors.Is(err, postbox.ErrInvalid)", name, err)
	case !ok:
		t.Errorf("%s: err = %v (%T), want a *postbox.ValidationError as it is, not wrapped", name, err, err)
	case ve.Field != field:
		t.Errorf("%s: field %q (%v), want %q", name, ve.Field, err, field)
	case !strings.HasPrefix(err.Error(), "postbox: invalid "+field+": ") || strings.Count(err.Error(), "postbox:") != 1:
		t.Errorf("%s: %q, want one prefix: postbox: invalid %s: ...", name, err, field)
	}
}

// written reports the row counts of outbox, subscriptions and subscribers.
func written(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	ctx := t.Context()
	return fmt.Sprintf("%d/%d/%d",
		pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.outbox`),
		pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.subscriptions`),
		pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.subscribers`))
}

// A malformed filter passed inside the caller's transaction is rejected
// without spoiling that transaction: the caller can go on and commit.
func TestMalformedFilterLeavesTransactionUsable(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 30*time.Second)
	pool := pgtest.Pool(t, 4)

	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if err := outbox.Publish(ctx, tx, &postbox.Message{Topic: "order.created", Payload: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	err = dispatcher.Subscribe(ctx, tx, dispatcher.Subscription{Subscriber: "big-orders", Topic: "order.created", Filter: "$.a ? ("})
	if !errors.Is(err, postbox.ErrInvalid) {
		t.Fatalf("Subscribe with a malformed filter: err = %v, want ErrInvalid", err)
	}
	if n := pgtest.Count(t, ctx, tx, `SELECT count(*) FROM postbox.subscribers`); n != 0 {
		t.Errorf("%d subscribers after the rejected Subscribe, want 0", n)
	}
	err = dispatcher.Subscribe(ctx, tx, dispatcher.Subscription{Subscriber: "big-orders", Topic: "order.created", Filter: "$.totalAmount ? (@ >= 10000)"})
	if err != nil {
		t.Fatalf("Subscribe with a good filter in the same transaction: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit after a rejected filter: %v", err)
	}
	if n := written(t, pool); n != "1/1/1" {
		t.Errorf("rows = %s after commit, want 1/1/1", n)
	}
}
