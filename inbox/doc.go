// Package inbox runs handlers for a subscriber's deliveries with
// exactly-once effects.
//
// A Consumer claims a batch of deliveries with FOR UPDATE SKIP LOCKED,
// runs the handler for each inside its own savepoint of one transaction,
// and commits once: what a handler writes through the pgx.Tx it is given
// commits in the same transaction that marks the delivery handled. A failed
// handler's effects are rolled back to its savepoint and the delivery is
// retried later, with exponential backoff and jitter; after the
// subscriber's MaxAttempts, or at once for postbox.Permanent errors, it
// becomes a dead letter (package dlq) carrying x-retry-count,
// x-original-error and x-moved-to-dlq-at.
//
//	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
//		order, err := postbox.Decode[Order](d.Payload) // bad JSON: permanent
//		if err != nil {
//			return err
//		}
//		_, err = tx.Exec(ctx, `UPDATE stock SET reserved = reserved + $1 WHERE sku = $2`, order.Qty, order.SKU)
//		return err
//	})
//	c, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: "inventory", Handler: h})
//	go c.Run(ctx)
//
// Guarantees:
//
//   - Exactly-once effects: a delivery is handled at least once, and its
//     handler's database effects commit at most once, because the mark
//     (the delivery's deletion plus a row in postbox.processed) commits
//     with them. A message ID handled within the dedup window is never
//     handled again by the same subscriber.
//   - Per-key order: a delivery is claimable only when no earlier pending
//     delivery of its key exists, so a key's messages are handled one at a
//     time, in publish order, across any number of consumers. A failing
//     message blocks only its own key until it succeeds or is dead-lettered.
//     Deliveries without a key are handled concurrently.
//   - A panicking handler is a failed attempt, never a crashed process.
//
// Handlers are shaped like net/http's: Handler, HandlerFunc, Middleware,
// Chain, plus Filter, Transform and Pipeline. Messages a handler publishes
// through package outbox with the handler's context carry the delivery's
// correlation-id and name it as their causation-id.
//
// HandleOnce gives messages that arrive from outside (another broker, a
// webhook) the same at-most-once handling. The Janitor forgets handled IDs
// after the subscriber's dedup window.
//
// A process killed while handling does not count an attempt: its
// transaction, and the claim with it, simply roll back. A message that
// kills its process every time is therefore retried forever; bound such
// handlers with HandlerTimeout and recover from their panics (the consumer
// does both).
package inbox
