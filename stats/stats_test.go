package stats_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
	"github.com/postbox-dev/postbox/stats"
)

// bundle is a database with a queue "work" whose consumer handles keys ok-*,
// fails "stuck" (an hour's backoff), rejects "bad" as permanently invalid;
// a topic subscriber "audit" with no consumer; and a no-route send.
type bundle struct {
	pool *pgxpool.Pool
}

func setup(t *testing.T) bundle {
	t.Helper()
	ctx := context.Background()
	pool := pgtest.Pool(t, 8)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(dispatcher.DeclareQueue(ctx, pool, "work", dispatcher.Options{
		MaxAttempts: 5, Backoff: dispatcher.Backoff{Initial: time.Hour, Max: time.Hour},
	}))
	must(dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: "audit", Topic: "orders.#"}))
	send := func(key string, deliverAt time.Time) {
		t.Helper()
		must(outbox.Send(ctx, pool, &postbox.Message{Topic: "work", Key: key, Payload: []byte(`{}`), DeliverAt: deliverAt}))
	}
	for i := range 5 {
		send(fmt.Sprintf("ok-%d", i), time.Time{})
	}
	send("stuck", time.Time{})
	send("stuck", time.Time{})
	send("stuck", time.Time{})
	send("bad", time.Time{})
	send("later", time.Now().Add(time.Hour))
	for i := range 7 {
		must(outbox.Publish(ctx, pool, &postbox.Message{Topic: "orders.created", Key: fmt.Sprint(i), Payload: []byte(`{}`)}))
	}
	must(outbox.Send(ctx, pool, &postbox.Message{Topic: "nowhere", Payload: []byte(`{}`)}))
	r, err := relay.New(pool, relay.Config{})
	must(err)
	_, err = r.Drain(ctx)
	must(err)

	c, err := inbox.NewConsumer(pool, inbox.Config{
		Subscriber: "work", NoListen: true,
		Handler: inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
			switch d.Key {
			case "stuck":
				return errors.New("boom: the warehouse does not answer")
			case "bad":
				return postbox.Permanent(errors.New("not an order"))
			}
			return nil
		}),
	})
	must(err)
	pgtest.WaitFor(t, ctx, 20*time.Second, "work's deliveries to settle", func() bool {
		if _, err := c.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
		d := pgtest.Depths(t, ctx, pool, "work")
		return d.Ready == 0 && d.Dead == 1 && d.Waiting == 4
	})

	// Left in the outbox: two due messages and a delayed one.
	must(outbox.Publish(ctx, pool, &postbox.Message{Topic: "orders.created", Payload: []byte(`{}`)}))
	must(outbox.Publish(ctx, pool, &postbox.Message{Topic: "orders.created", Payload: []byte(`{}`)}))
	must(outbox.Publish(ctx, pool, &postbox.Message{Topic: "orders.created", Payload: []byte(`{}`), DeliverAt: time.Now().Add(time.Hour)}))
	return bundle{pool: pool}
}

func TestReadIsExactOnASmallBacklog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t)
	ov, err := stats.Read(ctx, b.pool)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]stats.Subscriber{}
	for _, s := range ov.Subscribers {
		byName[s.Name] = s
		// The same figures as the exact view.
		d := pgtest.Depths(t, ctx, b.pool, s.Name)
		if s.Ready.N != int64(d.Ready) || s.Waiting.N != int64(d.Waiting) || s.Dead.N != int64(d.Dead) {
			t.Errorf("%s: ready %v waiting %v dead %v; the view says %+v", s.Name, s.Ready, s.Waiting, s.Dead, d)
		}
		for _, c := range []stats.Count{s.Ready, s.Waiting, s.InBackoff, s.Delayed, s.Blocked, s.Dead} {
			if !c.Exact {
				t.Errorf("%s: a count is an estimate on a small backlog: %+v", s.Name, s)
			}
		}
		if !s.LagExact || !s.HandledExact {
			t.Errorf("%s: lag or rate marked inexact: %+v", s.Name, s)
		}
	}
	if len(ov.Subscribers) != 3 {
		t.Fatalf("subscribers = %+v, want audit, nowhere and work", ov.Subscribers)
	}

	for name, want := range map[string]stats.Subscriber{
		"work":    {Kind: "queue", InBackoff: count(1), Blocked: count(2), Delayed: count(1), Dead: count(1)},
		"audit":   {Kind: "topic", Ready: count(7)},
		"nowhere": {Kind: stats.Undeclared, Dead: count(1)},
	} {
		t.Run(name, func(t *testing.T) {
			for _, c := range []*stats.Count{&want.Ready, &want.InBackoff, &want.Blocked, &want.Delayed, &want.Dead} {
				c.Exact = true // the zero ones too
			}
			got := byName[name]
			if got.Kind != want.Kind || got.Ready != want.Ready || got.InBackoff != want.InBackoff ||
				got.Blocked != want.Blocked || got.Delayed != want.Delayed || got.Dead != want.Dead {
				t.Errorf("%s = %+v\nwant %+v", name, got, want)
			}
		})
	}
	if w := byName["work"]; w.HandledPerMinute != 5 {
		t.Errorf("work handled %v per minute, want 5 (five handled within the last minute)", w.HandledPerMinute)
	}
	if a := byName["audit"]; a.OldestPending.IsZero() || a.Lag <= 0 || a.Lag > time.Minute {
		t.Errorf("audit's lag = %v (oldest %v), want the few seconds since the relay moved them", a.Lag, a.OldestPending)
	}
	if n := byName["nowhere"]; !n.OldestPending.IsZero() || n.Lag != 0 {
		t.Errorf("nowhere has nothing pending, yet lag %v", n.Lag)
	}

	o := ov.Outbox
	if o.Pending != count(3) || o.Due != count(2) || o.Oldest.IsZero() || o.OldestDue.IsZero() || o.Scheduled != count(0) {
		t.Errorf("outbox = %+v, want 3 waiting of which 2 due", o)
	}
	if o.Age < 0 || o.Age > time.Minute {
		t.Errorf("outbox age %v", o.Age)
	}

	one, err := stats.Of(ctx, b.pool, "work")
	if err != nil || one.Name != "work" || one.Blocked != count(2) {
		t.Errorf("Of(work) = %+v, %v", one, err)
	}
	none, err := stats.Of(ctx, b.pool, "ghost")
	if err != nil || none.Kind != stats.Undeclared || none.Ready != count(0) || none.Dead != count(0) {
		t.Errorf("Of(ghost) = %+v, %v", none, err)
	}
}

func count(n int64) stats.Count { return stats.Count{N: n, Exact: true} }

func TestBlockedKeysShowTheFailingHead(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t)
	keys, err := stats.BlockedKeys(ctx, b.pool, "work", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 {
		t.Fatalf("blocked keys = %+v, want stuck alone", keys)
	}
	k := keys[0]
	if k.Key != "stuck" || k.Attempts != 1 || !strings.Contains(k.LastError, "warehouse does not answer") ||
		k.Parked != count(3) || k.BehindDeadLetter || k.LastErrorAt.IsZero() || time.Until(k.NextAttempt) < 10*time.Minute { // an hour, with jitter
		t.Errorf("blocked key = %+v", k)
	}
	if keys, err := stats.BlockedKeys(ctx, b.pool, "audit", 5); err != nil || len(keys) != 0 {
		t.Errorf("audit's blocked keys = %+v, %v", keys, err)
	}
	if _, err := stats.BlockedKeys(ctx, b.pool, "work", stats.MaxBlockedKeys+1); !errors.Is(err, postbox.ErrInvalid) {
		t.Errorf("limit past the maximum: %v, want a validation error", err)
	}
}

// With dispatcher.KeyParks, a key whose message died waits behind the dead
// letter: BlockedKeys says so, with the letter's error.
func TestBlockedKeysBehindADeadLetter(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	if err := dispatcher.DeclareQueue(ctx, pool, "strict", dispatcher.Options{KeyOnDead: dispatcher.KeyParks}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := outbox.Send(ctx, pool, &postbox.Message{Topic: "strict", Key: "order-9", Payload: []byte(`{}`)}); err != nil {
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
	first := true
	c, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: "strict", NoListen: true, BatchSize: 1,
		Handler: inbox.HandlerFunc(func(context.Context, pgx.Tx, *inbox.Delivery) error {
			if first {
				first = false
				return postbox.Permanent(errors.New("malformed order"))
			}
			return nil
		})})
	if err != nil {
		t.Fatal(err)
	}
	pgtest.WaitFor(t, ctx, 20*time.Second, "the first to die and the others to park", func() bool {
		if _, err := c.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
		d := pgtest.Depths(t, ctx, pool, "strict")
		return d.Dead == 1 && d.Waiting == 2
	})
	keys, err := stats.BlockedKeys(ctx, pool, "strict", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 1 || keys[0].Key != "order-9" || !keys[0].BehindDeadLetter ||
		!strings.Contains(keys[0].LastError, "malformed order") || !keys[0].NextAttempt.IsZero() || keys[0].Parked != count(2) {
		t.Errorf("blocked keys = %+v", keys)
	}
}

func TestOptionsAreValidated(t *testing.T) {
	t.Parallel()
	pool := pgtest.Pool(t, 1)
	for _, o := range []stats.Options{{Cap: -1}, {RateWindow: -time.Second}, {RateCap: -5}} {
		if _, err := o.Read(context.Background(), pool); !errors.Is(err, postbox.ErrInvalid) {
			t.Errorf("%+v: %v, want a validation error", o, err)
		}
	}
}

// Read works through the caller's transaction too (a savepoint), and leaves
// it usable.
func TestReadInATransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t)
	tx, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := stats.Subscribers(ctx, tx); err != nil {
		t.Fatal(err)
	}
	var seqscan string
	if err := tx.QueryRow(ctx, "SHOW enable_seqscan").Scan(&seqscan); err != nil || seqscan != "on" {
		t.Errorf("after Read, the caller's transaction has enable_seqscan %q (%v), want its own setting back", seqscan, err)
	}
}
