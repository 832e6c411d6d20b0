package main

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/outbox"
)

// Topics and queues of the story.
const (
	topicOrderCreated = "order.created"
	topicOrderShipped = "order.shipped"
	queueProcessOrder = "process-order"
	queueShipments    = "shipments"
)

// Item is one line of an order. Amounts are in cents.
type Item struct {
	SKU       string `json:"sku"`
	Quantity  int    `json:"quantity"`
	UnitPrice int64  `json:"unitPrice"`
}

// Order is the payload of order.created and of the process-order command.
type Order struct {
	ID          string `json:"orderId"`
	Customer    string `json:"customer"`
	TotalAmount int64  `json:"totalAmount"`
	Items       []Item `json:"items"`
}

// ShipmentRequest is the command the process-order handler sends to the
// shipments queue.
type ShipmentRequest struct {
	OrderID  string `json:"orderId"`
	Customer string `json:"customer"`
	Items    []Item `json:"items"`
}

// OrderShipped is the payload of order.shipped.
type OrderShipped struct {
	OrderID    string `json:"orderId"`
	ShipmentID int64  `json:"shipmentId"`
}

// prices is the storefront's price list. It already sells DOCK-X1, which
// the inventory's catalogue does not know yet.
var prices = map[string]int64{
	"KB-01":   4900,
	"MS-02":   2500,
	"MN-27":   32900,
	"LP-14":   129900,
	"CB-USB":  900,
	"DOCK-X1": 8900,
}

// poisonSKU makes the inventory handler fail until the catalogue knows it.
const poisonSKU = "DOCK-X1"

func line(sku string, qty int) Item {
	return Item{SKU: sku, Quantity: qty, UnitPrice: prices[sku]}
}

func newOrder(id, customer string, items ...Item) Order {
	o := Order{ID: id, Customer: customer, Items: items}
	for _, it := range items {
		o.TotalAmount += int64(it.Quantity) * it.UnitPrice
	}
	return o
}

// sampleOrders are the orders the service takes: three of 100.00 or more
// (ord-1002, ord-1004, ord-1008) and one poison order (ord-1006).
func sampleOrders() []Order {
	return []Order{
		newOrder("ord-1001", "alice", line("KB-01", 1)),
		newOrder("ord-1002", "bob", line("LP-14", 1)),
		newOrder("ord-1003", "carol", line("MS-02", 2)),
		newOrder("ord-1004", "dave", line("MN-27", 2)),
		newOrder("ord-1005", "erin", line("CB-USB", 3)),
		newOrder("ord-1006", "frank", line(poisonSKU, 1)),
		newOrder("ord-1007", "grace", line("KB-01", 1), line("MS-02", 1)),
		newOrder("ord-1008", "heidi", line("LP-14", 1), line("MN-27", 1)),
		newOrder("ord-1009", "ivan", line("CB-USB", 1)),
		newOrder("ord-1010", "judy", line("MS-02", 1)),
	}
}

// placed is what placing one order wrote to the outbox.
type placed struct {
	Created *postbox.Message // order.created, published to a topic
	Command *postbox.Message // process-order, sent to a queue
}

// placeOrder is the order service's write path: one transaction inserts the
// order row, publishes order.created and sends the process-order command.
// Both messages exist if and only if the order does.
func placeOrder(ctx context.Context, pool *pgxpool.Pool, o Order) (placed, error) {
	payload, err := postbox.JSON(o)
	if err != nil {
		return placed{}, err
	}
	p := placed{
		Created: &postbox.Message{Topic: topicOrderCreated, Type: "order.created.v1", Key: o.ID, Payload: payload},
		Command: &postbox.Message{Topic: queueProcessOrder, Type: "order.process.v1", Key: o.ID, Payload: payload},
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		items, err := postbox.JSON(o.Items)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx,
			`INSERT INTO orders (id, customer, total_amount, items) VALUES ($1, $2, $3, $4)`,
			o.ID, o.Customer, o.TotalAmount, items); err != nil {
			return err
		}
		if err := publish(ctx, tx, p.Created); err != nil {
			return err
		}
		return send(ctx, tx, p.Command)
	})
	if err != nil {
		return placed{}, fmt.Errorf("place order %s: %w", o.ID, err)
	}
	return p, nil
}

// placeOrders places each order in its own transaction.
func placeOrders(ctx context.Context, pool *pgxpool.Pool, orders []Order) ([]placed, error) {
	out := make([]placed, 0, len(orders))
	for _, o := range orders {
		p, err := placeOrder(ctx, pool, o)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// sendLegacyCommand is an old checkout that still sends process-order
// commands in a retired format (orderId a number, items a string). No
// retry can fix that payload: the handler rejects it as permanent and it
// stays a dead letter.
func sendLegacyCommand(ctx context.Context, db postbox.DBTX) error {
	msg := &postbox.Message{
		Topic:   queueProcessOrder,
		Type:    "order.process.v0",
		Key:     "ord-1011",
		Payload: []byte(`{"orderId": 1011, "customer": "legacy-checkout", "items": "KB-01 x1"}`),
	}
	if err := send(ctx, db, msg); err != nil {
		return fmt.Errorf("legacy command: %w", err)
	}
	return nil
}

// republish writes messages to the outbox again with their IDs unchanged,
// as a producer does when it retries after a timeout without knowing
// whether its first attempt committed. No handler sees them twice: the
// relay drops a copy whose ID the subscriber has handled, and a consumer
// drops a copy that arrives while the original is still pending.
func republish(ctx context.Context, db postbox.DBTX, orders []placed) (int, error) {
	n := 0
	for _, p := range orders {
		if err := outbox.Publish(ctx, db, p.Created); err != nil {
			return n, fmt.Errorf("republish: %w", err)
		}
		if err := outbox.Send(ctx, db, p.Command); err != nil {
			return n, fmt.Errorf("republish: %w", err)
		}
		n += 2
	}
	return n, nil
}

// publish writes msg to its topic with outbox.Publish and records it in
// message_log, both through db: normally the caller's transaction, so the
// business change, the message and the record commit together.
func publish(ctx context.Context, db postbox.DBTX, msg *postbox.Message) error {
	if err := outbox.Publish(ctx, db, msg); err != nil {
		return err
	}
	return logMessage(ctx, db, msg, false)
}

// send is publish for a point-to-point send to the queue msg.Topic.
func send(ctx context.Context, db postbox.DBTX, msg *postbox.Message) error {
	if err := outbox.Send(ctx, db, msg); err != nil {
		return err
	}
	return logMessage(ctx, db, msg, true)
}

func logMessage(ctx context.Context, db postbox.DBTX, msg *postbox.Message, queue bool) error {
	// outbox sets causation-id on messages written inside a handler.
	_, err := db.Exec(ctx,
		`INSERT INTO message_log (message_id, topic, is_queue, payload, causation_id)
		 VALUES ($1, $2, $3, $4, NULLIF($5, '')::uuid)`,
		msg.ID, msg.Topic, queue, msg.Payload, msg.Headers[postbox.HeaderCausationID])
	if err != nil {
		return fmt.Errorf("log message %s: %w", msg.ID, err)
	}
	return nil
}
