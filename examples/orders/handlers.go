package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
)

// highValueFilter is a SQL/JSON path over the payload: the subscription
// matches orders of 100.00 (10000 cents) or more.
const highValueFilter = `$.totalAmount ? (@ >= 10000)`

// retries are the retry settings of every subscriber in this example:
// three attempts, 10ms apart and growing, so the poison order becomes a
// dead letter in well under a second. Services normally keep the defaults
// (10 attempts, 1s growing to 5m).
var retries = dispatcher.Options{
	MaxAttempts: 3,
	Backoff:     dispatcher.Backoff{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond},
}

// declareRouting declares who receives what, in one transaction:
//
//	order.created ──▶ inventory, notifications, analytics (order.#),
//	                  high-value (only if totalAmount >= 10000)
//	order.shipped ──▶ analytics (order.#)
//	process-order queue ──▶ two competing consumers ──▶ shipments queue
func declareRouting(ctx context.Context, db postbox.DBTX) error {
	for _, name := range []string{"inventory", "notifications", "analytics", "high-value"} {
		if err := dispatcher.DeclareSubscriber(ctx, db, name, retries); err != nil {
			return err
		}
	}
	for _, name := range []string{queueProcessOrder, queueShipments} {
		if err := dispatcher.DeclareQueue(ctx, db, name, retries); err != nil {
			return err
		}
	}
	subs := []dispatcher.Subscription{
		{Subscriber: "inventory", Topic: topicOrderCreated},
		{Subscriber: "notifications", Topic: topicOrderCreated},
		{Subscriber: "analytics", Topic: "order.#"},
		{Subscriber: "high-value", Topic: topicOrderCreated, Filter: highValueFilter},
	}
	for _, s := range subs {
		if err := dispatcher.Subscribe(ctx, db, s); err != nil {
			return err
		}
	}
	return nil
}

// Each handler writes its effect through tx, the consumer's transaction:
// the effect commits together with the mark that the message was handled,
// or not at all.

// reserveStock is the inventory service. An unknown SKU is an ordinary
// error, retried with backoff: the catalogue sync may still bring it.
func reserveStock(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	order, err := postbox.Decode[Order](d.Payload)
	if err != nil {
		return err // permanent: a payload that does not decode never will
	}
	for _, it := range order.Items {
		tag, err := tx.Exec(ctx, `UPDATE products SET reserved = reserved + $2 WHERE sku = $1`, it.SKU, it.Quantity)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			// Returning an error rolls back the lines reserved above too.
			return fmt.Errorf("inventory: unknown SKU %q in order %s", it.SKU, order.ID)
		}
	}
	_, err = tx.Exec(ctx, `INSERT INTO reservations (message_id, order_id, lines) VALUES ($1, $2, $3)`,
		d.ID, order.ID, len(order.Items))
	return err
}

// notifyCustomer is the notification service: it queues an e-mail.
func notifyCustomer(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	order, err := postbox.Decode[Order](d.Payload)
	if err != nil {
		return err
	}
	body := fmt.Sprintf("Thank you, %s: order %s (%d.%02d) is confirmed.",
		order.Customer, order.ID, order.TotalAmount/100, order.TotalAmount%100)
	_, err = tx.Exec(ctx, `INSERT INTO notifications (message_id, order_id, customer, body) VALUES ($1, $2, $3, $4)`,
		d.ID, order.ID, order.Customer, body)
	return err
}

// countEvent is analytics: it subscribes to order.# and counts every order
// event by topic, whatever its payload.
func countEvent(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	_, err := tx.Exec(ctx, `INSERT INTO analytics_events (message_id, topic) VALUES ($1, $2)`, d.ID, d.Topic)
	return err
}

// flagHighValue receives only what highValueFilter lets through: the
// relay evaluated the filter, the handler need not check again.
func flagHighValue(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	order, err := postbox.Decode[Order](d.Payload)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO high_value_orders (message_id, order_id, total_amount) VALUES ($1, $2, $3)`,
		d.ID, order.ID, order.TotalAmount)
	return err
}

// processOrder turns each process-order command into a shipment request on
// the shipments queue. inbox.Transform writes the new message through the
// delivery's transaction, and postbox stamps it with the command's
// correlation-id and causation-id.
var processOrder = inbox.Transform(toShipmentRequest, send)

func toShipmentRequest(ctx context.Context, d *inbox.Delivery) (*postbox.Message, error) {
	order, err := postbox.Decode[Order](d.Payload)
	if err != nil {
		return nil, err // the legacy command ends here, as a dead letter
	}
	payload, err := postbox.JSON(ShipmentRequest{OrderID: order.ID, Customer: order.Customer, Items: order.Items})
	if err != nil {
		return nil, err
	}
	return &postbox.Message{Topic: queueShipments, Type: "shipment.request.v1", Key: order.ID, Payload: payload}, nil
}

// ship is the shipping service: it records the shipment, marks the order
// shipped and publishes order.shipped, all in the delivery's transaction.
func ship(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	req, err := postbox.Decode[ShipmentRequest](d.Payload)
	if err != nil {
		return err
	}
	var id int64
	if err := tx.QueryRow(ctx, `INSERT INTO shipments (message_id, order_id) VALUES ($1, $2) RETURNING id`,
		d.ID, req.OrderID).Scan(&id); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE orders SET status = 'shipped' WHERE id = $1`, req.OrderID); err != nil {
		return err
	}
	payload, err := postbox.JSON(OrderShipped{OrderID: req.OrderID, ShipmentID: id})
	if err != nil {
		return err
	}
	return publish(ctx, tx, &postbox.Message{Topic: topicOrderShipped, Type: "order.shipped.v1", Key: req.OrderID, Payload: payload})
}
