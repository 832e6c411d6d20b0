package dispatcher_test

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/postboxtest"
	"github.com/postbox-dev/postbox/relay"
)

// A wildcard subscription and a content filter: analytics takes every
// order event (order.#), high-value only the orders of 100.00 or more,
// which the relay decides from the payload, in its statement.
func ExampleSubscribe() {
	ctx := context.Background()
	pool, drop := postboxtest.MustPool() // a throwaway database
	defer drop()
	subs := []dispatcher.Subscription{
		{Subscriber: "analytics", Topic: "order.#"},
		{Subscriber: "high-value", Topic: "order.created", Filter: `$.totalAmount ? (@ >= 10000)`},
	}
	for _, s := range subs {
		if err := dispatcher.Subscribe(ctx, pool, s); err != nil {
			fmt.Println(err)
			return
		}
	}
	for _, m := range []struct{ topic, payload string }{
		{"order.created", `{"orderId":"ord-1","totalAmount":4900}`},
		{"order.created", `{"orderId":"ord-2","totalAmount":129900}`},
		{"order.shipped", `{"orderId":"ord-1"}`},
		{"order.eu.refunded", `{"orderId":"ord-3","totalAmount":25000}`},
		{"invoice.created", `{"orderId":"ord-2"}`},
	} {
		_ = outbox.Publish(ctx, pool, &postbox.Message{Topic: m.topic, Payload: []byte(m.payload)})
	}
	r, _ := relay.New(pool, relay.Config{})
	res, _ := r.Drain(ctx)
	fmt.Printf("relayed %d messages as %d deliveries; %d matched no subscription\n", res.Claimed, res.Delivered, res.Dropped)

	for _, s := range subs {
		var got []string
		c, _ := inbox.NewConsumer(pool, inbox.Config{Subscriber: s.Subscriber,
			Handler: inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
				got = append(got, d.Topic+" "+string(d.Payload))
				return nil
			})})
		for n := 1; n > 0; {
			n, _ = c.RunOnce(ctx)
		}
		slices.Sort(got) // keyless messages are handled concurrently, in no set order
		fmt.Printf("%s (%s):\n", s.Subscriber, s.Topic)
		for _, g := range got {
			fmt.Println("  ", g)
		}
	}
	// Output:
	// relayed 5 messages as 5 deliveries; 1 matched no subscription
	// analytics (order.#):
	//    order.created {"orderId":"ord-1","totalAmount":4900}
	//    order.created {"orderId":"ord-2","totalAmount":129900}
	//    order.eu.refunded {"orderId":"ord-3","totalAmount":25000}
	//    order.shipped {"orderId":"ord-1"}
	// high-value (order.created):
	//    order.created {"orderId":"ord-2","totalAmount":129900}
}
