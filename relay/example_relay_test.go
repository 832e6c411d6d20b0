package relay_test

import (
	"context"
	"fmt"
	"slices"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/postboxtest"
	"github.com/postbox-dev/postbox/relay"
)

// A relay moves committed outbox rows to the subscribers' inboxes, one
// statement per batch. OnBatch observes each committed batch (tracing
// and metrics hook in there); Stats add them up. A send to a queue that
// does not exist becomes a "no-route" dead letter instead of vanishing.
func ExampleNew() {
	ctx := context.Background()
	pool, drop := postboxtest.MustPool() // a throwaway database
	defer drop()
	_ = dispatcher.DeclareQueue(ctx, pool, "process-order", dispatcher.Options{})
	_ = dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: "billing", Topic: "order.*"})
	_ = dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: "analytics", Topic: "order.#"})

	_ = outbox.Publish(ctx, pool, &postbox.Message{Topic: "order.created", Key: "ord-1"})
	_ = outbox.Send(ctx, pool, &postbox.Message{Topic: "process-order", Key: "ord-1"})
	_ = outbox.Send(ctx, pool, &postbox.Message{Topic: "no-such-queue"})

	r, err := relay.New(pool, relay.Config{OnBatch: func(b relay.BatchInfo) {
		fmt.Printf("batch: claimed %d, delivered %d, no-route %d, subscribers %v\n",
			b.Claimed, b.Delivered, b.NoRoute, slices.Sorted(slices.Values(b.Subscribers)))
	}})
	if err != nil {
		fmt.Println(err)
		return
	}
	if _, err := r.Drain(ctx); err != nil { // services call r.Run(ctx)
		fmt.Println(err)
		return
	}
	s := r.Stats()
	fmt.Printf("stats: batches %d, claimed %d, delivered %d, no-route %d\n", s.Batches, s.Claimed, s.Delivered, s.NoRoute)
	// Output:
	// batch: claimed 3, delivered 3, no-route 1, subscribers [analytics billing process-order]
	// stats: batches 1, claimed 3, delivered 3, no-route 1
}
