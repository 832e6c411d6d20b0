package postbox_test

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/postboxtest"
	"github.com/postbox-dev/postbox/relay"
	"github.com/postbox-dev/postbox/schema"
)

// The README's usage sample, end to end: an order and its message in one
// transaction, a relay, and a consumer whose effect commits with the mark
// that the message was handled. The lines between the markers are the
// README's, verbatim.
func Example() {
	pool, drop := postboxtest.MustPool() // a throwaway database
	defer drop()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	if _, err := pool.Exec(ctx, `CREATE TABLE orders (id text PRIMARY KEY, total bigint);
		CREATE TABLE stock (order_id text PRIMARY KEY, reserved int NOT NULL DEFAULT 0);
		INSERT INTO stock (order_id) VALUES ('ord-1')`); err != nil {
		panic(err)
	}
	id, total := "ord-1", int64(12900)
	payload, _ := postbox.JSON(map[string]any{"orderId": id, "totalAmount": total})
	go stopWhenReserved(ctx, pool, id, stop) // the consumer below runs until then

	// --- README ---
	schema.Migrate(ctx, pool) // once, at start-up; safe from many processes

	dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{
		Subscriber: "inventory", Topic: "order.*", Filter: `$.totalAmount ? (@ >= 10000)`})

	tx, _ := pool.Begin(ctx) // the producer's own business transaction
	tx.Exec(ctx, `INSERT INTO orders (id, total) VALUES ($1, $2)`, id, total)
	outbox.Publish(ctx, tx, &postbox.Message{Topic: "order.created", Key: id, Payload: payload})
	tx.Commit(ctx) // the message exists if and only if the order does

	r, _ := relay.New(pool, relay.Config{})
	go r.Run(ctx) // or run `postbox relay` beside the service
	c, _ := inbox.NewConsumer(pool, inbox.Config{Subscriber: "inventory",
		Handler: inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
			_, err := tx.Exec(ctx, `UPDATE stock SET reserved = reserved + 1 WHERE order_id = $1`, d.Key)
			return err // commits with the "handled" mark, or rolls back and retries
		})})
	c.Run(ctx)
	// --- README ---

	var reserved int
	_ = pool.QueryRow(context.Background(), `SELECT reserved FROM stock WHERE order_id = $1`, id).Scan(&reserved)
	fmt.Printf("order %s: reserved %d, handled %d\n", id, reserved, c.Stats().Handled)
	// Output:
	// order ord-1: reserved 1, handled 1
}

// stopWhenReserved polls the stock of order id and calls stop once the
// consumer reserved it (or after 30s, which the output then shows).
func stopWhenReserved(ctx context.Context, pool *pgxpool.Pool, id string, stop func()) {
	defer stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for {
		var reserved int
		if err := pool.QueryRow(ctx, `SELECT reserved FROM stock WHERE order_id = $1`, id).Scan(&reserved); err == nil && reserved > 0 {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-deadline:
			return
		case <-tick.C:
		}
	}
}
