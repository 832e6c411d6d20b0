package outbox_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/postboxtest"
	"github.com/postbox-dev/postbox/relay"
)

// The main path: publish in the business transaction, relay, consume.
// RunOnce and Drain move one batch at a time, so the example ends; a
// service runs relay.Run and Consumer.Run instead.
func ExamplePublish() {
	ctx := context.Background()
	pool, drop := postboxtest.MustPool() // a throwaway database
	defer drop()
	_ = dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: "billing", Topic: "order.created"})

	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		// ... the business writes go through tx too ...
		return outbox.Publish(ctx, tx, &postbox.Message{
			Topic: "order.created", Key: "ord-1", Payload: []byte(`{"orderId":"ord-1","total":4900}`)})
	})
	if err != nil {
		fmt.Println(err)
		return
	}

	r, _ := relay.New(pool, relay.Config{})
	moved, _ := r.Drain(ctx)
	fmt.Println("relayed:", moved.Claimed)

	c, _ := inbox.NewConsumer(pool, inbox.Config{Subscriber: "billing",
		Handler: inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
			fmt.Printf("billing got %s %s: %s\n", d.Topic, d.Key, d.Payload)
			return nil // its effects, written through tx, commit with the "handled" mark
		})})
	n, _ := c.RunOnce(ctx)
	fmt.Println("handled:", n)
	// Output:
	// relayed: 1
	// billing got order.created ord-1: {"orderId":"ord-1","total":4900}
	// handled: 1
}

// Publishing from code that holds a *sql.Tx (database/sql, sqlx, GORM,
// Bun) rather than a pgx transaction; here through pgx's stdlib driver.
func ExamplePublishSQL() {
	ctx := context.Background()
	pool, drop := postboxtest.MustPool()
	defer drop()
	db := stdlib.OpenDBFromPool(pool) // or sql.Open("pgx", url), or lib/pq
	defer db.Close()

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer tx.Rollback()
	err = outbox.PublishSQL(ctx, tx, &postbox.Message{Topic: "order.created", Key: "ord-1", Payload: []byte(`{}`)})
	fmt.Println("publish:", err)
	err = outbox.SendSQL(ctx, tx, &postbox.Message{Topic: "Not A Queue"})
	var invalid *postbox.ValidationError
	if errors.As(err, &invalid) { // the same validation as Send's; tx goes on
		fmt.Println("send rejected, field:", invalid.Field)
	}
	fmt.Println("commit:", tx.Commit())
	// Output:
	// publish: <nil>
	// send rejected, field: Message.Topic
	// commit: <nil>
}
