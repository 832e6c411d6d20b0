package postboxtest_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/postboxtest"
)

// fakeTB records what a helper reports instead of failing the test, and
// stops the helper's goroutine on Fatal as testing does.
type fakeTB struct {
	testing.TB
	mu     sync.Mutex
	failed []string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.failed = append(f.failed, fmt.Sprintf(format, args...))
	f.mu.Unlock()
	runtime.Goexit()
}

func (f *fakeTB) Fatal(args ...any) { f.Fatalf("%s", fmt.Sprint(args...)) }

// failure runs fn with a fakeTB and returns what it reported, "" if
// nothing.
func failure(t *testing.T, fn func(tb testing.TB)) string {
	t.Helper()
	f := &fakeTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(f)
	}()
	<-done
	return strings.Join(f.failed, "\n")
}

func begin(t *testing.T, pool *pgxpool.Pool) pgx.Tx {
	t.Helper()
	tx, err := pool.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	return tx
}

// Pool gives each test a database of its own, migrated, and drops it when
// the test ends.
func TestPool(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var names [2]string
	t.Run("databases", func(t *testing.T) {
		for i := range names {
			pool := postboxtest.Pool(t)
			if err := pool.QueryRow(ctx, `SELECT current_database()`).Scan(&names[i]); err != nil {
				t.Fatal(err)
			}
			if err := outbox.Publish(ctx, pool, &postbox.Message{Topic: "a"}); err != nil {
				t.Fatalf("the database is not migrated: %v", err)
			}
		}
		if names[0] == names[1] {
			t.Errorf("two Pools share database %s", names[0])
		}
	})
	pool := postboxtest.Pool(t)
	var left int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_database WHERE datname = ANY($1)`, names[:]).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d of the subtest's databases %v outlived it", left, names)
	}
}

func TestNewDatabaseAndDrop(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d, err := postboxtest.NewDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, d.URL)
	if err != nil {
		t.Fatal(err)
	}
	var name string
	err = conn.QueryRow(ctx, `SELECT current_database()`).Scan(&name)
	conn.Close(ctx)
	if err != nil || name != d.Name {
		t.Fatalf("connected to %q (%v), want %q", name, err, d.Name)
	}
	if err := d.Drop(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := pgx.Connect(ctx, d.URL); err == nil {
		t.Errorf("database %s still accepts connections after Drop", d.Name)
	}
}

func TestWantMatches(t *testing.T) {
	t.Parallel()
	p := &postboxtest.Published{Queue: true, Message: postbox.Message{
		Topic: "process-order", Type: "order.process.v1", Key: "ord-1",
		Payload: []byte(`{"orderId":"ord-1","total":5,"customer":{"name":"alice","tier":"gold"},"items":["a","b"]}`),
		Headers: map[string]string{postbox.HeaderCorrelationID: "c-1"},
	}}
	tests := []struct {
		name string
		want postboxtest.Want
		ok   bool
	}{
		{"anything", postboxtest.Want{}, true},
		{"topic", postboxtest.Want{Topic: "process-order"}, true},
		{"other topic", postboxtest.Want{Topic: "order.created"}, false},
		{"a send", postboxtest.Want{Topic: "process-order", Queue: true}, true},
		{"type and key", postboxtest.Want{Type: "order.process.v1", Key: "ord-1"}, true},
		{"other key", postboxtest.Want{Key: "ord-2"}, false},
		{"a field", postboxtest.Want{Payload: map[string]any{"orderId": "ord-1"}}, true},
		{"a number as float", postboxtest.Want{Payload: map[string]any{"total": 5.0}}, true},
		{"a number as int", postboxtest.Want{Payload: map[string]any{"total": 5}}, true},
		{"a wrong number", postboxtest.Want{Payload: map[string]any{"total": 6}}, false},
		{"part of a nested object", postboxtest.Want{Payload: map[string]any{"customer": map[string]any{"tier": "gold"}}}, true},
		{"a nested mismatch", postboxtest.Want{Payload: map[string]any{"customer": map[string]any{"tier": "silver"}}}, false},
		{"an array, whole", postboxtest.Want{Payload: map[string]any{"items": []string{"a", "b"}}}, true},
		{"an array, part", postboxtest.Want{Payload: map[string]any{"items": []string{"a"}}}, false},
		{"a missing field", postboxtest.Want{Payload: map[string]any{"coupon": nil}}, false},
		{"a header", postboxtest.Want{Headers: map[string]string{postbox.HeaderCorrelationID: "c-1"}}, true},
		{"a missing header", postboxtest.Want{Headers: map[string]string{"x-tenant": ""}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.want.Matches(p); got != tt.ok {
				t.Errorf("%s matches = %t, want %t", tt.want, got, tt.ok)
			}
		})
	}
	notJSON := &postboxtest.Published{Message: postbox.Message{Topic: "a", Payload: []byte("plain text")}}
	if (postboxtest.Want{Payload: map[string]any{}}).Matches(notJSON) {
		t.Error("a Payload want matches a payload that is not JSON")
	}
	if !(postboxtest.Want{Topic: "a"}).Matches(notJSON) {
		t.Error("a want without Payload does not match a payload that is not JSON")
	}
}

// publishSome writes, through tx, an order.created for ord-1 and ord-2 and
// a process-order send for ord-1.
func publishSome(t *testing.T, tx pgx.Tx) {
	t.Helper()
	ctx := context.Background()
	for _, id := range []string{"ord-1", "ord-2"} {
		payload := fmt.Sprintf(`{"orderId":%q}`, id)
		if err := outbox.Publish(ctx, tx, &postbox.Message{Topic: "order.created", Type: "order.created.v1", Key: id, Payload: []byte(payload)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := outbox.Send(ctx, tx, &postbox.Message{Topic: "process-order", Key: "ord-1", Payload: []byte(`{"orderId":"ord-1"}`)}); err != nil {
		t.Fatal(err)
	}
}

func TestRequirePublishedTx(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := postboxtest.Pool(t)
	tx := begin(t, pool)
	publishSome(t, tx)

	tests := []struct {
		name    string
		want    postboxtest.Want
		failure string // "" when it passes
	}{
		{"one of a key", postboxtest.Want{Topic: "order.created", Key: "ord-2"}, ""},
		{"by payload", postboxtest.Want{Topic: "order.created", Payload: map[string]any{"orderId": "ord-1"}}, ""},
		{"the send", postboxtest.Want{Queue: true}, ""},
		{"none", postboxtest.Want{Topic: "order.shipped"}, "no published message matches {topic=order.shipped}; the outbox holds"},
		{"several", postboxtest.Want{Topic: "order.created"}, "2 published messages match {topic=order.created}, want exactly one"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got *postboxtest.Published
			msg := failure(t, func(tb testing.TB) { got = postboxtest.RequirePublishedTx(ctx, tb, tx, tt.want) })
			if tt.failure == "" {
				if msg != "" {
					t.Fatalf("failed: %s", msg)
				}
				if !tt.want.Matches(got) {
					t.Errorf("returned %+v, which does not match", got)
				}
				return
			}
			if !strings.Contains(msg, tt.failure) {
				t.Errorf("failure %q, want it to say %q", msg, tt.failure)
			}
		})
	}
	// What the transaction wrote is invisible elsewhere until it commits.
	msg := failure(t, func(tb testing.TB) { postboxtest.RequirePublishedTx(ctx, tb, pool, postboxtest.Want{Key: "ord-2"}) })
	if !strings.Contains(msg, "the outbox holds nothing") {
		t.Errorf("through the pool, before commit: %q, want nothing found", msg)
	}
}

func TestRequireManyPublishedTx(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := postboxtest.Pool(t)
	tx := begin(t, pool)
	publishSome(t, tx)

	created := func(key string) postboxtest.Want { return postboxtest.Want{Topic: "order.created", Key: key} }
	tests := []struct {
		name  string
		wants []postboxtest.Want
		ok    bool
	}{
		{"in order, others ignored", []postboxtest.Want{created("ord-1"), created("ord-2")}, true},
		{"all three", []postboxtest.Want{created("ord-1"), created("ord-2"), {Queue: true}}, true},
		{"out of order", []postboxtest.Want{created("ord-2"), created("ord-1")}, false},
		{"one missing", []postboxtest.Want{created("ord-1"), created("ord-2"), created("ord-3")}, false},
		{"one too few wanted", []postboxtest.Want{{Topic: "order.created"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []*postboxtest.Published
			msg := failure(t, func(tb testing.TB) { got = postboxtest.RequireManyPublishedTx(ctx, tb, tx, tt.wants) })
			if tt.ok != (msg == "") {
				t.Fatalf("failure %q, want ok=%t", msg, tt.ok)
			}
			if tt.ok && len(got) != len(tt.wants) {
				t.Errorf("returned %d messages, want %d", len(got), len(tt.wants))
			}
			if !tt.ok && !strings.Contains(msg, "do not match, in order") {
				t.Errorf("failure %q does not say what was wanted", msg)
			}
		})
	}
}

func TestRequireNotPublishedTx(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := postboxtest.Pool(t)
	tx := begin(t, pool)
	publishSome(t, tx)
	if msg := failure(t, func(tb testing.TB) {
		postboxtest.RequireNotPublishedTx(ctx, tb, tx, postboxtest.Want{Topic: "order.created", Key: "ord-3"})
	}); msg != "" {
		t.Errorf("failed: %s", msg)
	}
	msg := failure(t, func(tb testing.TB) {
		postboxtest.RequireNotPublishedTx(ctx, tb, tx, postboxtest.Want{Key: "ord-1"})
	})
	if !strings.Contains(msg, "2 published messages match {key=ord-1}, want none") {
		t.Errorf("failure %q, want the two of ord-1 named", msg)
	}
}

// effect writes one row per delivery into the test's effects table.
func effect(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	_, err := tx.Exec(ctx, `INSERT INTO effects (message_id, subscriber) VALUES ($1, $2)`, d.ID, d.Subscriber)
	return err
}

func withEffects(t *testing.T, db postbox.DBTX) {
	t.Helper()
	if _, err := db.Exec(context.Background(), `CREATE TABLE effects (message_id uuid, subscriber text)`); err != nil {
		t.Fatal(err)
	}
}

// Handle runs a handler as the consumer does, in a savepoint of the test's
// transaction: effects stay on success and roll back on failure; panics,
// permanent errors, the last attempt, the timeout, a refused commit and a
// swallowed SQL error come out as the consumer sees them.
func TestHandle(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := postboxtest.Pool(t)
	withEffects(t, pool)
	if err := dispatcher.DeclareSubscriber(ctx, pool, "billing", dispatcher.Options{MaxAttempts: 3}); err != nil {
		t.Fatal(err)
	}
	then := func(h inbox.HandlerFunc, after func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error) inbox.HandlerFunc {
		return func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
			if err := h(ctx, tx, d); err != nil {
				return err
			}
			return after(ctx, tx, d)
		}
	}
	publishReceipt := func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		return outbox.Publish(ctx, tx, &postbox.Message{Topic: "billing.invoiced", Key: d.Key, Payload: []byte(`{"ok":true}`)})
	}
	tests := []struct {
		name      string
		h         inbox.HandlerFunc
		opts      *postboxtest.HandleOpts
		err       string // "" for handled
		dead      bool
		published int
	}{
		{"handled, publishing", then(effect, publishReceipt), &postboxtest.HandleOpts{Subscriber: "billing"}, "", false, 1},
		{"an error is retried", then(effect, func(context.Context, pgx.Tx, *inbox.Delivery) error {
			return errors.New("card declined")
		}), nil, "card declined", false, 0},
		{"the last attempt dies", then(effect, func(context.Context, pgx.Tx, *inbox.Delivery) error {
			return errors.New("card declined")
		}), &postboxtest.HandleOpts{Subscriber: "billing", Attempt: 3}, "card declined", true, 0},
		{"a permanent error dies at once", then(effect, func(context.Context, pgx.Tx, *inbox.Delivery) error {
			return postbox.Permanent(errors.New("bad payload"))
		}), nil, "permanent: bad payload", true, 0},
		{"a panic is an error", then(effect, func(context.Context, pgx.Tx, *inbox.Delivery) error {
			panic("nil map")
		}), nil, "handler panicked: nil map", false, 0},
		{"the timeout ends the context", then(effect, func(ctx context.Context, _ pgx.Tx, _ *inbox.Delivery) error {
			<-ctx.Done()
			return ctx.Err()
		}), &postboxtest.HandleOpts{Timeout: 20 * time.Millisecond}, "context deadline exceeded", false, 0},
		{"the consumer owns the transaction", then(effect, func(ctx context.Context, tx pgx.Tx, _ *inbox.Delivery) error {
			return tx.Commit(ctx)
		}), nil, inbox.ErrTxOwned.Error(), false, 0},
		{"a release on the last attempt is no failure", then(effect, func(context.Context, pgx.Tx, *inbox.Delivery) error {
			return fmt.Errorf("shutting down: %w", inbox.ErrRelease)
		}), &postboxtest.HandleOpts{Subscriber: "billing", Attempt: 3}, "delivery released", false, 0},
		{"a swallowed SQL error fails", then(effect, func(ctx context.Context, tx pgx.Tx, _ *inbox.Delivery) error {
			_, _ = tx.Exec(ctx, `SELECT 1/0`)
			return nil
		}), nil, "handler returned nil but left the transaction aborted", false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tx := begin(t, pool)
			msg := &postbox.Message{Topic: "order.created", Key: "ord-1", Payload: []byte(`{}`),
				Headers: map[string]string{postbox.HeaderCorrelationID: "conv-1"}}
			res := postboxtest.Handle(ctx, t, tx, tt.h, msg, tt.opts)
			if tt.err == "" && res.Err != nil || tt.err != "" && (res.Err == nil || !strings.Contains(res.Err.Error(), tt.err)) {
				t.Fatalf("Err = %v, want %q", res.Err, tt.err)
			}
			if res.Dead != tt.dead {
				t.Errorf("Dead = %t, want %t", res.Dead, tt.dead)
			}
			if released := errors.Is(res.Err, inbox.ErrRelease); res.Released != released {
				t.Errorf("Released = %t, want %t", res.Released, released)
			}
			if len(res.Published) != tt.published {
				t.Fatalf("published %d messages, want %d", len(res.Published), tt.published)
			}
			// The test's transaction goes on; the effect is there only if
			// the delivery was handled.
			var n int
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM effects WHERE message_id = $1`, msg.ID).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if want := map[bool]int{true: 1, false: 0}[tt.err == ""]; n != want {
				t.Errorf("%d effects in the test's transaction, want %d", n, want)
			}
			for _, p := range res.Published {
				if p.Headers[postbox.HeaderCausationID] != msg.ID.String() || p.Headers[postbox.HeaderCorrelationID] != "conv-1" {
					t.Errorf("published %s with headers %v, want the delivery's correlation and causation", p.Topic, p.Headers)
				}
				postboxtest.RequirePublishedTx(ctx, t, tx, postboxtest.Want{Topic: "billing.invoiced", Key: "ord-1"})
			}
		})
	}
}

// Drain relays and consumes until nothing is left, including what the
// handlers publish on the way.
func TestDrain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := postboxtest.Pool(t)
	withEffects(t, pool)
	fast := dispatcher.Options{MaxAttempts: 1}
	for _, step := range []func() error{
		func() error { return dispatcher.DeclareSubscriber(ctx, pool, "billing", fast) },
		func() error { return dispatcher.DeclareQueue(ctx, pool, "invoices", fast) },
		func() error {
			return dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: "billing", Topic: "order.*"})
		},
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	billing, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: "billing", NoListen: true,
		Handler: inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
			if d.Key == "ord-bad" {
				return postbox.Permanent(errors.New("bad order"))
			}
			if err := effect(ctx, tx, d); err != nil {
				return err
			}
			return outbox.Send(ctx, tx, &postbox.Message{Topic: "invoices", Key: d.Key})
		})})
	if err != nil {
		t.Fatal(err)
	}
	invoices, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: "invoices", NoListen: true, Handler: inbox.HandlerFunc(effect)})
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"ord-1", "ord-2", "ord-bad"} {
		if err := outbox.Publish(ctx, pool, &postbox.Message{Topic: "order.created", Key: key}); err != nil {
			t.Fatal(err)
		}
	}
	res := postboxtest.Drain(ctx, t, pool, billing, invoices)
	want := postboxtest.DrainResult{Relayed: 5, Handled: 4, Dead: 1}
	if res != want {
		t.Errorf("Drain = %+v, want %+v", res, want)
	}
	var effects int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM effects`).Scan(&effects); err != nil || effects != 4 {
		t.Errorf("%d effects (%v), want 4", effects, err)
	}
	if again := postboxtest.Drain(ctx, t, pool, billing, invoices); again != (postboxtest.DrainResult{}) {
		t.Errorf("a second Drain did %+v, want nothing", again)
	}
}

// MustPool is for code without a testing.TB: its drop function closes
// the pool and drops the database.
func TestMustPool(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool, drop := postboxtest.MustPool()
	var name string
	if err := pool.QueryRow(ctx, `SELECT current_database()`).Scan(&name); err != nil {
		t.Fatal(err)
	}
	drop()
	other := postboxtest.Pool(t)
	var n int
	if err := other.QueryRow(ctx, `SELECT count(*) FROM pg_database WHERE datname = $1`, name).Scan(&n); err != nil || n != 0 {
		t.Errorf("database %s: %d left (%v) after drop, want 0", name, n, err)
	}
}
