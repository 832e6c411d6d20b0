package inbox_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/outbox"
)

type order struct {
	OrderID     string  `json:"orderId"`
	TotalAmount float64 `json:"totalAmount"`
}

type shipment struct {
	OrderID string `json:"orderId"`
}

// setupOrders subscribes subscriber to orders.created and publishes one
// order per amount, keyed by order ID, with the given headers, relayed.
func setupOrders(t *testing.T, subscriber string, headers map[string]string, amounts ...float64) (*bundle, []*postbox.Message) {
	t.Helper()
	ctx := context.Background()
	b := newBundle(t, subscriber)
	if err := dispatcher.Subscribe(ctx, b.pool, dispatcher.Subscription{Subscriber: subscriber, Topic: "orders.created"}); err != nil {
		t.Fatal(err)
	}
	msgs := make([]*postbox.Message, len(amounts))
	for i, a := range amounts {
		id := fmt.Sprintf("o-%d", i)
		payload, err := postbox.JSON(order{OrderID: id, TotalAmount: a})
		if err != nil {
			t.Fatal(err)
		}
		msgs[i] = &postbox.Message{Topic: "orders.created", Type: "order.created.v1", Key: id, Payload: payload, Headers: headers}
		if err := outbox.Publish(ctx, b.pool, msgs[i]); err != nil {
			t.Fatal(err)
		}
	}
	b.drain(t)
	return b, msgs
}

// step records name as an effect of the delivery, in its transaction.
func step(name string) inbox.Handler {
	return inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		o, err := postbox.Decode[order](d.Payload)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO effects (message_id, step, amount) VALUES ($1, $2, $3)`, d.ID, name, o.TotalAmount)
		return err
	})
}

func highValue(d *inbox.Delivery) bool {
	o, err := postbox.Decode[order](d.Payload)
	return err == nil && o.TotalAmount >= 10000
}

// Filter passes on only the high-value orders; the others are handled with
// no effect.
func TestFilterPassesOnlyMatchingDeliveries(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b, _ := setupOrders(t, "vip-desk", nil, 500, 10000, 25000, 9999.99, 10000.5)
	h := inbox.Chain(step("vip"), inbox.Filter(highValue))
	c := b.consumer(t, inbox.Config{Handler: h})
	b.runUntilEmpty(t, c)
	rows, err := b.pool.Query(ctx, `SELECT amount::float8 FROM effects ORDER BY amount`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[float64])
	if err != nil {
		t.Fatal(err)
	}
	if want := []float64{10000, 10000.5, 25000}; !slices.Equal(got, want) {
		t.Fatalf("handled amounts %v, want %v", got, want)
	}
	if s := c.Stats(); s.Handled != 5 {
		t.Fatalf("stats = %+v, want all 5 handled (filtered ones with no effect)", s)
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.processed WHERE subscriber = 'vip-desk'`); got != 5 {
		t.Fatalf("processed = %d, want 5", got)
	}
}

// Transform turns each order into a ship-order command sent in the
// delivery's transaction; the command carries the order's correlation-id
// (or the order's ID when it has none) and names the order as its cause.
// The shipping consumer then sees those headers.
func TestTransformSendsCorrelatedCommandInTheSameTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b, orders := setupOrders(t, "fulfilment", map[string]string{postbox.HeaderCorrelationID: "checkout-42"}, 120, -1)
	plain := &postbox.Message{Topic: "orders.created", Key: "o-9", Payload: []byte(`{"orderId":"o-9","totalAmount":5}`)}
	if err := outbox.Publish(ctx, b.pool, plain); err != nil {
		t.Fatal(err)
	}
	b.drain(t)
	orders = append(orders, plain)
	if err := dispatcher.DeclareQueue(ctx, b.pool, "ship-order", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	toShipment := inbox.Transform(func(ctx context.Context, d *inbox.Delivery) (*postbox.Message, error) {
		o, err := postbox.Decode[order](d.Payload)
		if err != nil {
			return nil, err
		}
		if o.TotalAmount < 0 {
			return nil, nil // nothing to ship
		}
		payload, err := postbox.JSON(shipment{OrderID: o.OrderID})
		if err != nil {
			return nil, err
		}
		return &postbox.Message{Topic: "ship-order", Type: "shipment.requested.v1", Key: d.Key, Payload: payload}, nil
	}, outbox.Send)
	c := b.consumer(t, inbox.Config{Handler: toShipment})
	b.runUntilEmpty(t, c)
	if s := c.Stats(); s.Handled != 3 {
		t.Fatalf("stats = %+v, want 3 handled", s)
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.outbox WHERE is_queue AND topic = 'ship-order'`); got != 2 {
		t.Fatalf("commands in the outbox = %d, want 2", got)
	}

	type seen struct {
		OrderID, Correlation, Causation string
	}
	got := make(chan seen, 3)
	ship := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		s, err := postbox.Decode[shipment](d.Payload)
		if err != nil {
			return err
		}
		got <- seen{s.OrderID, d.Headers[postbox.HeaderCorrelationID], d.Headers[postbox.HeaderCausationID]}
		return nil
	})
	b.drain(t)
	shipping := newConsumer(t, b.pool, inbox.Config{Subscriber: "ship-order", Handler: ship})
	runUntilEmpty(t, b.pool, shipping, "ship-order")
	close(got)
	var all []seen
	for s := range got {
		all = append(all, s)
	}
	slices.SortFunc(all, func(a, b seen) int { return cmp.Compare(a.OrderID, b.OrderID) })
	want := []seen{
		{"o-0", "checkout-42", orders[0].ID.String()},
		{"o-9", plain.ID.String(), plain.ID.String()},
	}
	if !slices.Equal(all, want) {
		t.Fatalf("shipping saw %+v, want %+v", all, want)
	}
}

// Pipeline runs its steps in order in one transaction and stops at the
// first error, which rolls back the earlier steps' effects, a transformed
// message included.
func TestPipelineStopsAtFirstErrorAndRollsBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b, orders := setupOrders(t, "fulfilment", nil, 100, 200)
	if err := dispatcher.DeclareQueue(ctx, b.pool, "ship-order", dispatcher.Options{MaxAttempts: 1}); err != nil {
		t.Fatal(err)
	}
	if err := dispatcher.DeclareSubscriber(ctx, b.pool, "fulfilment", dispatcher.Options{MaxAttempts: 1}); err != nil {
		t.Fatal(err)
	}
	send := inbox.Transform(func(ctx context.Context, d *inbox.Delivery) (*postbox.Message, error) {
		return &postbox.Message{Topic: "ship-order", Key: d.Key, Payload: d.Payload}, nil
	}, outbox.Send)
	errCredit := errors.New("credit check failed")
	check := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		if o, _ := postbox.Decode[order](d.Payload); o.TotalAmount > 150 {
			return errCredit
		}
		return nil
	})
	var ran []string
	trace := func(name string, h inbox.Handler) inbox.Handler {
		return inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
			ran = append(ran, d.Key+":"+name)
			return h.Handle(ctx, tx, d)
		})
	}
	h := inbox.Pipeline(trace("a", step("a")), trace("send", send), trace("b", step("b")), trace("check", check), trace("c", step("c")))
	// One delivery per batch: the steps of each run once. (In a larger
	// batch, a failure makes the deliveries before it run again, carefully;
	// only their last run's effects commit.)
	c := b.consumer(t, inbox.Config{Handler: h, BatchSize: 1})
	for range 2 {
		if _, err := c.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"o-0:a", "o-0:send", "o-0:b", "o-0:check", "o-0:c", "o-1:a", "o-1:send", "o-1:b", "o-1:check"}
	// The two orders have different keys: either may come first.
	slices.SortStableFunc(ran, func(a, b string) int { return strings.Compare(a[:3], b[:3]) })
	if !slices.Equal(ran, want) {
		t.Fatalf("steps ran %v, want %v", ran, want)
	}
	effects := func(id uuid.UUID) []string {
		rows, err := b.pool.Query(ctx, `SELECT step FROM effects WHERE message_id = $1 ORDER BY step`, id)
		if err != nil {
			t.Fatal(err)
		}
		steps, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return steps
	}
	if got := effects(orders[0].ID); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("effects of the passing order = %v, want [a b c]", got)
	}
	if got := effects(orders[1].ID); len(got) != 0 {
		t.Fatalf("effects of the failing order = %v, want none", got)
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.outbox WHERE topic = 'ship-order' AND key = 'o-0'`); got != 1 {
		t.Fatal("the passing order's command was not sent")
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.outbox WHERE topic = 'ship-order' AND key = 'o-1'`); got != 0 {
		t.Fatal("the failing order's command was sent")
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.dead_letters WHERE key = 'o-1' AND last_error = $1`, errCredit.Error()); got != 1 {
		t.Fatal("the failing order is not a dead letter with the step's error")
	}
}

// Chain(h, a, b) runs a, then b, then h, and unwinds in reverse.
func TestChainOrder(t *testing.T) {
	t.Parallel()
	var trace []string
	mw := func(name string) inbox.Middleware {
		return func(next inbox.Handler) inbox.Handler {
			return inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
				trace = append(trace, name+" in")
				err := next.Handle(ctx, tx, d)
				trace = append(trace, name+" out")
				return err
			})
		}
	}
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		trace = append(trace, "handler")
		return nil
	})
	if err := inbox.Chain(h, mw("a"), mw("b")).Handle(context.Background(), nil, &inbox.Delivery{}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"a in", "b in", "handler", "b out", "a out"}; !slices.Equal(trace, want) {
		t.Fatalf("trace = %v, want %v", trace, want)
	}
	trace = nil
	if err := inbox.Chain(h).Handle(context.Background(), nil, &inbox.Delivery{}); err != nil || !slices.Equal(trace, []string{"handler"}) {
		t.Fatalf("Chain with no middleware: trace %v, err %v", trace, err)
	}
}
