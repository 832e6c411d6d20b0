package inbox_test

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/postboxtest"
)

// HandleOnce takes messages that arrive from outside postbox (a webhook,
// another broker) and handles each ID at most once per subscriber: the
// mark and the handler's effects commit together. A sender's retry of the
// same message is reported as a duplicate and not handled again.
func ExampleHandleOnce() {
	ctx := context.Background()
	pool, drop := postboxtest.MustPool() // a throwaway database
	defer drop()
	_, _ = pool.Exec(ctx, `CREATE TABLE payments (id uuid PRIMARY KEY, amount bigint)`)

	record := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		p, err := postbox.Decode[struct{ Amount int64 }](d.Payload)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO payments (id, amount) VALUES ($1, $2)`, d.ID, p.Amount)
		return err
	})
	// The webhook's delivery ID is the message ID: it deduplicates.
	webhook := &postbox.Message{ID: uuid.MustParse("0193a0c4-7a2e-7cc1-9f0e-3c8f1b2a4d5e"),
		Topic: "stripe.payment", Payload: []byte(`{"Amount":4900}`)}
	for range 2 { // the sender retries: it did not see our answer
		duplicate, err := inbox.HandleOnce(ctx, pool, "payments-webhook", webhook, record)
		fmt.Println("duplicate:", duplicate, "err:", err)
	}
	var n int
	_ = pool.QueryRow(ctx, `SELECT count(*) FROM payments`).Scan(&n)
	fmt.Println("payments:", n)
	// Output:
	// duplicate: false err: <nil>
	// duplicate: true err: <nil>
	// payments: 1
}
