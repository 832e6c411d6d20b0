package main

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/postboxtest"
)

var summaryRE = regexp.MustCompile(`^orders: published=(\d+) handled=(\d+) duplicates=(\d+) lost=(\d+) dead=(\d+) replayed=(\d+)$`)

// TestRun plays the whole story on a fresh database and checks the summary
// line against the guarantees, then against the database itself.
func TestRun(t *testing.T) {
	t.Parallel()
	databaseURL := pgtest.URL(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var stdout, stderr bytes.Buffer
	if err := run(ctx, databaseURL, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr.String())
	}
	t.Logf("stderr:\n%s", stderr.String())

	out := stdout.String()
	if strings.Count(out, "\n") != 1 {
		t.Fatalf("stdout should be exactly one line, got %q", out)
	}
	line := strings.TrimSuffix(out, "\n")
	m := summaryRE.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("summary %q does not match %s", line, summaryRE)
	}
	n := func(i int) int64 {
		v, err := strconv.ParseInt(m[i], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	published, handled, duplicates, lost, dead, replayed := n(1), n(2), n(3), n(4), n(5), n(6)

	if duplicates != 0 {
		t.Errorf("duplicates = %d, want 0 (some effect was written twice)", duplicates)
	}
	if lost != 0 {
		t.Errorf("lost = %d, want 0 (some delivery has neither an effect nor a dead letter)", lost)
	}
	if dead < 1 {
		t.Errorf("dead = %d, want at least 1 (the malformed command stays dead)", dead)
	}
	if replayed < 1 {
		t.Errorf("replayed = %d, want at least 1 (the poison order was replayed)", replayed)
	}
	if handled <= 0 {
		t.Errorf("handled = %d, want more than 0", handled)
	}

	// The story is deterministic: 10 orders publish order.created and send
	// process-order (20), the legacy checkout sends 1, and each of the 10
	// good commands leads to a shipment request and an order.shipped (20).
	// Deliveries: 10 x inventory, notifications, analytics; 3 high-value;
	// 11 process-order; 10 shipments; 10 order.shipped to analytics = 64,
	// of which 1 (the malformed command) is dead.
	const want = "orders: published=41 handled=63 duplicates=0 lost=0 dead=1 replayed=1"
	if line != want {
		t.Errorf("summary:\n got %s\nwant %s", line, want)
	}
	// Cross-check against the database the line was counted from.
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var expected, pending, outbox, orders, shipments, replayedHandled int64
	err = conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM expected_deliveries),
	                                 (SELECT coalesce(sum(ready + waiting), 0) FROM postbox.queue_depths),
	                                 (SELECT count(*) FROM postbox.outbox),
	                                 (SELECT count(*) FROM orders),
	                                 (SELECT count(*) FROM shipments),
	                                 (SELECT count(*) FROM postbox.replays r
	                                   JOIN postbox.processed p ON p.subscriber = r.subscriber AND p.message_id = r.message_id)`).
		Scan(&expected, &pending, &outbox, &orders, &shipments, &replayedHandled)
	if err != nil {
		t.Fatal(err)
	}
	// Each order wrote two messages, the legacy checkout one, and each
	// shipment came from one request and published one order.shipped.
	if want := 2*orders + 1 + 2*shipments; published != want {
		t.Errorf("published = %d, want %d for %d orders and %d shipments", published, want, orders, shipments)
	}
	if handled+dead != expected {
		t.Errorf("handled %d + dead %d != %d expected deliveries", handled, dead, expected)
	}
	if pending != 0 || outbox != 0 {
		t.Errorf("after the run: %d pending deliveries, %d outbox rows; want none", pending, outbox)
	}
	if replayedHandled != replayed {
		t.Errorf("%d of %d replayed letters were handled, want all", replayedHandled, replayed)
	}
	// Every handled delivery, and only those, is marked handled: a mark
	// without its effect (or the other way round) would show here.
	var unmatched int64
	if err := conn.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM postbox.processed p
		        WHERE NOT EXISTS (SELECT 1 FROM effects e WHERE e.subscriber = p.subscriber AND e.message_id = p.message_id))
		     + (SELECT count(*) FROM (SELECT DISTINCT subscriber, message_id FROM effects) e
		        WHERE NOT EXISTS (SELECT 1 FROM postbox.processed p WHERE p.subscriber = e.subscriber AND p.message_id = e.message_id))`).
		Scan(&unmatched); err != nil {
		t.Fatal(err)
	}
	if unmatched != 0 {
		t.Errorf("%d deliveries marked handled without an effect, or with an effect but unmarked", unmatched)
	}
	var deadSubscriber, deadKey string
	err = conn.QueryRow(ctx, `SELECT subscriber, key FROM postbox.dead_letters`).Scan(&deadSubscriber, &deadKey)
	if err != nil {
		t.Fatalf("the one dead letter: %v", err)
	}
	if deadSubscriber != queueProcessOrder || deadKey != "ord-1011" {
		t.Errorf("dead letter is %s/%s, want the malformed command %s/ord-1011", deadSubscriber, deadKey, queueProcessOrder)
	}
	var reserved int
	if err := conn.QueryRow(ctx, `SELECT reserved FROM products WHERE sku = $1`, poisonSKU).Scan(&reserved); err != nil {
		t.Fatal(err)
	}
	if reserved != 1 {
		t.Errorf("%s reserved = %d after the replay, want 1", poisonSKU, reserved)
	}
}

// setUp gives a test a database of its own with the example's tables and
// routing, through postboxtest as a service's own tests would.
func setUp(t *testing.T) *pgxpool.Pool {
	t.Helper()
	ctx := context.Background()
	pool := postboxtest.Pool(t)
	if _, err := pool.Exec(ctx, tablesSQL); err != nil {
		t.Fatal(err)
	}
	if err := declareRouting(ctx, pool); err != nil {
		t.Fatal(err)
	}
	return pool
}

// Placing an order publishes order.created and sends process-order, both
// or neither.
func TestPlaceOrderPublishesBothMessages(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := setUp(t)
	o := sampleOrders()[1] // ord-1002, a laptop
	if _, err := placeOrder(ctx, pool, o); err != nil {
		t.Fatal(err)
	}
	want := []postboxtest.Want{
		{Topic: topicOrderCreated, Type: "order.created.v1", Key: o.ID,
			Payload: map[string]any{"orderId": o.ID, "customer": "bob", "totalAmount": o.TotalAmount}},
		{Topic: queueProcessOrder, Queue: true, Type: "order.process.v1", Key: o.ID},
	}
	postboxtest.RequireManyPublishedTx(ctx, t, pool, want)
	// The same order again fails on its primary key: its transaction
	// rolls back, and with it both messages.
	if _, err := placeOrder(ctx, pool, o); err == nil {
		t.Fatal("placing an order twice succeeded")
	}
	postboxtest.RequireManyPublishedTx(ctx, t, pool, want)
	postboxtest.RequireNotPublishedTx(ctx, t, pool, postboxtest.Want{Key: "ord-1001"})
}

// Each handler, run as its consumer would run it.
func TestHandlers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := setUp(t)
	good := sampleOrders()[0]
	if _, err := placeOrder(ctx, pool, good); err != nil {
		t.Fatal(err)
	}
	goodPayload, err := postbox.JSON(good)
	if err != nil {
		t.Fatal(err)
	}
	poisonPayload, err := postbox.JSON(sampleOrders()[5])
	if err != nil {
		t.Fatal(err)
	}
	shipment, err := postbox.JSON(ShipmentRequest{OrderID: good.ID, Customer: good.Customer, Items: good.Items})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		h         inbox.Handler
		msg       postbox.Message
		opts      *postboxtest.HandleOpts
		err       string
		dead      bool
		published []postboxtest.Want
	}{
		{name: "a command becomes a shipment request", h: processOrder,
			msg:       postbox.Message{Topic: queueProcessOrder, Key: good.ID, Payload: goodPayload},
			opts:      &postboxtest.HandleOpts{Subscriber: queueProcessOrder},
			published: []postboxtest.Want{{Topic: queueShipments, Queue: true, Type: "shipment.request.v1", Key: good.ID}}},
		{name: "the legacy command is dead at once", h: processOrder,
			msg:  postbox.Message{Topic: queueProcessOrder, Key: "ord-1011", Payload: []byte(`{"orderId": 1011, "items": "KB-01 x1"}`)},
			opts: &postboxtest.HandleOpts{Subscriber: queueProcessOrder}, err: "permanent", dead: true},
		{name: "the poison order is retried", h: inbox.HandlerFunc(reserveStock),
			msg:  postbox.Message{Topic: topicOrderCreated, Key: "ord-1006", Payload: poisonPayload},
			opts: &postboxtest.HandleOpts{Subscriber: "inventory"}, err: `unknown SKU "DOCK-X1"`},
		{name: "until its last attempt", h: inbox.HandlerFunc(reserveStock),
			msg:  postbox.Message{Topic: topicOrderCreated, Key: "ord-1006", Payload: poisonPayload},
			opts: &postboxtest.HandleOpts{Subscriber: "inventory", Attempt: retries.MaxAttempts}, err: `unknown SKU "DOCK-X1"`, dead: true},
		{name: "shipping publishes order.shipped", h: inbox.HandlerFunc(ship),
			msg:       postbox.Message{Topic: queueShipments, Key: good.ID, Payload: shipment},
			opts:      &postboxtest.HandleOpts{Subscriber: queueShipments},
			published: []postboxtest.Want{{Topic: topicOrderShipped, Type: "order.shipped.v1", Key: good.ID, Payload: map[string]any{"orderId": good.ID}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tx, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			msg := tt.msg
			res := postboxtest.Handle(ctx, t, tx, tt.h, &msg, tt.opts)
			if tt.err == "" && res.Err != nil || tt.err != "" && (res.Err == nil || !strings.Contains(res.Err.Error(), tt.err)) {
				t.Fatalf("Err = %v, want %q", res.Err, tt.err)
			}
			if res.Dead != tt.dead {
				t.Errorf("Dead = %t, want %t", res.Dead, tt.dead)
			}
			if len(res.Published) != len(tt.published) {
				t.Fatalf("published %d messages, want %d", len(res.Published), len(tt.published))
			}
			for i, w := range tt.published {
				if !w.Matches(res.Published[i]) {
					t.Errorf("published %+v, want %s", res.Published[i].Message, w)
				}
				if got := res.Published[i].Headers[postbox.HeaderCausationID]; got != msg.ID.String() {
					t.Errorf("causation-id %q, want the delivery %s", got, msg.ID)
				}
			}
		})
	}
}

// One high-value order, relayed and handled to the end by every consumer
// of the story, with postboxtest.Drain instead of running workers.
func TestDrainOneOrder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := setUp(t)
	var consumers []*inbox.Consumer
	for _, s := range consumerSpecs {
		c, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: s.subscriber, Handler: s.handler, NoListen: true})
		if err != nil {
			t.Fatal(err)
		}
		consumers = append(consumers, c)
	}
	o := sampleOrders()[7] // ord-1008, 100.00 or more
	if _, err := placeOrder(ctx, pool, o); err != nil {
		t.Fatal(err)
	}
	res := postboxtest.Drain(ctx, t, pool, consumers...)
	// order.created, process-order, its shipment request, order.shipped;
	// order.created to inventory, notifications, analytics and high-value,
	// the command, the shipment, order.shipped to analytics.
	if want := (postboxtest.DrainResult{Relayed: 4, Handled: 7}); res != want {
		t.Errorf("Drain = %+v, want %+v", res, want)
	}
	var status string
	if err := pool.QueryRow(ctx, `SELECT status FROM orders WHERE id = $1`, o.ID).Scan(&status); err != nil || status != "shipped" {
		t.Errorf("order %s is %q (%v), want shipped", o.ID, status, err)
	}
}
