package inbox_test

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/inbox"
)

// Middleware wraps handlers as net/http middleware does: the first given
// to Chain is the outermost. Handlers are plain functions, so a chain can
// be exercised without a database (tx is nil here because none of them
// uses it; a Consumer passes the batch transaction).
func ExampleChain() {
	logging := func(name string) inbox.Middleware {
		return func(next inbox.Handler) inbox.Handler {
			return inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
				fmt.Println(name, "before", d.Type)
				err := next.Handle(ctx, tx, d)
				fmt.Println(name, "after", d.Type)
				return err
			})
		}
	}
	handle := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		fmt.Println("handle", d.Type)
		return nil
	})
	h := inbox.Chain(handle, logging("outer"), logging("inner"))
	_ = h.Handle(context.Background(), nil, &inbox.Delivery{Message: postbox.Message{Type: "order.created.v1"}})
	// Output:
	// outer before order.created.v1
	// inner before order.created.v1
	// handle order.created.v1
	// inner after order.created.v1
	// outer after order.created.v1
}

// Filter keeps a content-based filter in Go: deliveries it drops count as
// handled, with no effects.
func ExampleFilter() {
	type order struct {
		ID          string  `json:"orderId"`
		TotalAmount float64 `json:"totalAmount"`
	}
	highValue := inbox.Filter(func(d *inbox.Delivery) bool {
		o, err := postbox.Decode[order](d.Payload)
		return err == nil && o.TotalAmount >= 10000
	})
	review := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		o, err := postbox.Decode[order](d.Payload) // bad JSON: a permanent error
		if err != nil {
			return err
		}
		fmt.Printf("review order %s of %.2f\n", o.ID, o.TotalAmount)
		return nil
	})
	h := inbox.Chain(review, highValue)
	for _, payload := range []string{
		`{"orderId":"o-1","totalAmount":500}`,
		`{"orderId":"o-2","totalAmount":25000}`,
		`{"orderId":"o-3","totalAmount":10000}`,
	} {
		d := &inbox.Delivery{Message: postbox.Message{Payload: []byte(payload)}}
		if err := h.Handle(context.Background(), nil, d); err != nil {
			fmt.Println(err)
		}
	}
	// Output:
	// review order o-2 of 25000.00
	// review order o-3 of 10000.00
}
