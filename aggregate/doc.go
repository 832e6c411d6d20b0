// Package aggregate is the Aggregator pattern on postbox: it collects
// messages that belong together (by correlation id, or any key) into state
// kept in PostgreSQL, and publishes one aggregate message when a rule says
// the aggregate is complete: a count of distinct parts, a predicate over
// them, or a timeout.
//
// An Aggregator is an inbox.Handler; run it on the consumer of the
// subscriber the parts arrive at:
//
//	agg, err := aggregate.New(aggregate.Config{
//		Name:    "order-lines",
//		Count:   3,               // complete with three distinct parts,
//		Timeout: 5 * time.Minute, // or with what came, five minutes after the first
//		Build: func(a *aggregate.Aggregate) (*postbox.Message, error) {
//			payload, err := combine(a.Parts)
//			return &postbox.Message{Topic: "order.assembled", Key: a.Key, Payload: payload}, err
//		},
//	})
//	c, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: "order-lines", Handler: agg})
//	go c.Run(ctx)
//	go agg.Run(ctx, pool) // fires the timeouts
//
// Guarantees:
//
//   - Exactly one aggregate message per aggregate. A part is stored, and
//     the aggregate completed and its message published (Config.Deliver),
//     in the transaction that marks the part's delivery handled: they
//     commit together or not at all. The aggregate's row is locked by the
//     transaction adding a part, so parts of one key are added one at a
//     time and only one of them completes it; a sweep completes an
//     aggregate only under the same lock, and only while it is open. The
//     message's ID is derived from the aggregate (ResultID), so even a
//     repeated completion could not publish two different messages.
//   - Duplicates and order do not matter. A part is identified by
//     Config.PartID (default: its message ID); a part stored already is
//     not counted again. Parts are handed to Build sorted by ID, so the
//     aggregate does not depend on the order they arrived in.
//   - Late parts are recognised. A completed aggregate is kept as a
//     tombstone for Config.Retention; a part that comes after completion
//     goes to Config.Late, or is counted (State.LateParts) and dropped.
//
// Timeouts need something that fires: Sweep completes the aggregates whose
// deadline has passed, and Run calls it every Config.SweepInterval. Any
// number of sweepers may run; each due aggregate completes once.
//
// Parts of one key wait for each other on the aggregate's row lock. Give
// parts their aggregate's key as message Key (as scatter-gather does), and
// the consumer hands them over one at a time, in order, instead; a batch
// that holds the locks of several aggregates can otherwise deadlock with
// another, which PostgreSQL breaks by failing one of them (a retried
// attempt).
//
// The state lives in postbox.aggregates and postbox.aggregate_parts
// (schema migration 3, applied by schema.Migrate).
package aggregate
