package watermill_test

import (
	"context"
	"fmt"
	"log"

	wm "github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/contrib/watermill"
	"github.com/postbox-dev/postbox/dispatcher"
)

// Watermill topics and consumer groups become postbox names: as they are
// when they are valid postbox names, encoded reversibly otherwise.
func ExampleTopicName() {
	for _, topic := range []string{"orders.created", "Orders/Created"} {
		name, _ := watermill.TopicName(topic)
		back, _ := watermill.WatermillTopic(name)
		fmt.Printf("%s -> %s -> %s\n", topic, name, back)
	}
	sub, _ := watermill.SubscriberName("billing", "orders.created")
	fmt.Println("billing's subscriber:", sub)
	// Output:
	// orders.created -> orders.created -> orders.created
	// Orders/Created -> wm--_orders__2f_created -> Orders/Created
	// billing's subscriber: billing.wm--orders__2ecreated
}

// A Watermill router that turns orders into invoices. The invoice row and
// the invoice message commit together with the order's Ack, exactly once.
// It needs a database, so it is compiled but not run.
func ExampleSubscriber() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://postgres@127.0.0.1:5432/app")
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()

	pub, err := watermill.NewPublisher(pool, watermill.PublisherConfig{})
	if err != nil {
		log.Fatal(err)
	}
	sub, err := watermill.NewSubscriber(pool, watermill.SubscriberConfig{
		ConsumerGroup: "billing",
		Options:       dispatcher.Options{MaxAttempts: 5}, // then a dead letter
		Concurrency:   4,                                  // the router handles messages concurrently
		RunRelay:      true,
	})
	if err != nil {
		log.Fatal(err)
	}
	router, err := message.NewRouter(message.RouterConfig{}, wm.NewSlogLogger(nil))
	if err != nil {
		log.Fatal(err)
	}
	router.AddMiddleware(watermill.PropagateTx) // invoices are published in the order's transaction
	router.AddHandler("invoice", "orders.created", sub, "invoices.issued", pub,
		func(msg *message.Message) ([]*message.Message, error) {
			tx, _ := watermill.TxFromContext(msg.Context())
			if _, err := tx.Exec(msg.Context(), `INSERT INTO invoices (order_id) VALUES ($1)`, string(msg.Payload)); err != nil {
				return nil, err // Nack: the insert is rolled back, the order retried
			}
			return []*message.Message{message.NewMessage(wm.NewUUID(), msg.Payload)}, nil
		})
	if err := router.Run(ctx); err != nil {
		log.Fatal(err)
	}
}
