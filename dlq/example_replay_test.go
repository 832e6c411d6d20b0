package dlq_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/dlq"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/postboxtest"
	"github.com/postbox-dev/postbox/relay"
)

// A message its handler cannot take becomes a dead letter; once the cause
// is fixed, Replay hands it to the subscriber again and it is handled.
func ExampleReplay_afterAFix() {
	ctx := context.Background()
	pool, drop := postboxtest.MustPool() // a throwaway database
	defer drop()
	_ = dispatcher.DeclareQueue(ctx, pool, "invoices", dispatcher.Options{MaxAttempts: 1})
	_ = outbox.Send(ctx, pool, &postbox.Message{Topic: "invoices", Key: "ord-7", Type: "invoice.v1"})

	fixed := false // say, a missing tax rate the handler needs
	c, _ := inbox.NewConsumer(pool, inbox.Config{Subscriber: "invoices",
		Handler: inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
			if !fixed {
				return errors.New("no tax rate for region eu-west")
			}
			fmt.Println("invoiced", d.Key)
			return nil
		})})
	r, _ := relay.New(pool, relay.Config{})
	drain := func() {
		_, _ = r.Drain(ctx)
		for n := 1; n > 0; {
			n, _ = c.RunOnce(ctx)
		}
	}
	drain() // one attempt, and it dies

	letters, _ := dlq.List(ctx, pool, dlq.Filter{Subscriber: "invoices"})
	for _, l := range letters {
		fmt.Printf("dead: %s %s after %d attempt(s): %s\n", l.Type, l.Key, l.Attempts, l.LastError)
	}
	fixed = true
	n, _ := dlq.Replay(ctx, pool, dlq.Filter{Subscriber: "invoices", ErrorContains: "tax rate"})
	fmt.Println("replayed:", n)
	drain()
	left, _ := dlq.Count(ctx, pool, dlq.Filter{Subscriber: "invoices"})
	fmt.Println("dead letters left:", left)
	// Output:
	// dead: invoice.v1 ord-7 after 1 attempt(s): no tax rate for region eu-west
	// replayed: 1
	// invoiced ord-7
	// dead letters left: 0
}
