// Package inbox runs handlers for a subscriber's deliveries with
// exactly-once effects.
//
// A Consumer claims a batch of deliveries, runs the handler for each in one
// transaction, and commits once: what a handler writes through the pgx.Tx
// it is given commits in the same transaction that marks the delivery
// handled. A failed handler's effects are rolled back and the delivery is
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
//	if err != nil { ... }
//	go c.Run(ctx)
//
// For the raw ceiling, a BatchHandler gets a whole batch in one call, to
// write all its effects with one statement:
//
//	bh := inbox.BatchHandlerFunc(func(ctx context.Context, tx pgx.Tx, batch []*inbox.Delivery) error {
//		ids := make([]uuid.UUID, len(batch))
//		for i, d := range batch {
//			ids[i] = d.ID
//		}
//		_, err := tx.Exec(ctx, `INSERT INTO seen (message_id) SELECT unnest($1::uuid[])`, ids)
//		return err // or a *inbox.BatchError naming the deliveries that failed
//	})
//	c, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: "audit", BatchHandler: bh})
//
// Guarantees:
//
//   - Exactly-once effects: a delivery is handled at least once, and its
//     handler's database effects commit at most once, because the mark (the
//     partition's cursor moving past it, and a row in postbox.processed)
//     commits with them. A message ID handled within the dedup window is
//     never handled again by the same subscriber.
//   - Per-key order: a subscriber's deliveries fall into 16 order
//     partitions by key, and one batch at a time works a partition, in
//     publish order, across any number of consumers and processes. A batch
//     takes a key's consecutive deliveries as a run, so a hot key moves a
//     batch per transaction. A failing message blocks only its own key: its
//     later deliveries are parked behind it, in order, while the partition's
//     other keys go on; once it is handled (or dead, unless the subscriber
//     parks keys on dead letters: dispatcher.KeyParks) they follow. Deliveries
//     without a key are handled concurrently.
//   - A panicking handler, or one that overruns HandlerTimeout, is a failed
//     attempt, never a crashed process.
//
// How a batch runs. It starts optimistically: one transaction, no savepoint
// per delivery, so a handler that writes one row costs that one statement.
// If a handler fails, the batch rolls back to a savepoint taken after the
// claim and runs again with a savepoint per delivery, so only the failed
// delivery's effects are lost. A handler may therefore run more than once
// for one delivery; only its last run's database effects commit (effects
// outside the database must be idempotent anyway, as with any at-least-once
// delivery). A batch stops starting handlers after BatchBudget and commits
// what it has.
//
// When the server ends a batch's session (idle_in_transaction_session_
// timeout, transaction_timeout, an administrator) or the connection fails,
// nobody can tell whose fault it was: no attempt is counted, and the
// consumer's batches get smaller. A delivery is charged an attempt for a
// lost batch only when it was its own doing (its handler's timeout closed
// the connection, or it left rows open) or when it ran alone.
//
// Idle, a consumer runs about one read-only claim statement a second (its
// poll backs off from PollInterval to MaxPollInterval, with jitter) and
// writes nothing; a relay notification wakes one worker, and a worker that
// claims a full batch wakes one more.
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
