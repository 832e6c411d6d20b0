// Package relay moves committed messages from postbox.outbox into the
// inbox stream of every subscriber they route to, or hands them to a Sink.
//
// A batch is one SQL statement (postbox.relay_batch), so payloads never
// travel through Go. It takes every free relay partition with a
// transaction-level advisory lock, claims the oldest outbox rows of those
// partitions (SKIP LOCKED) above the partitions' marks, deletes them, and
// appends one stream row per (subscriber, message) in outbox order. Being
// one statement, a batch commits whole or not at all: a relay killed
// mid-batch loses and duplicates nothing. An empty poll writes nothing: no
// transaction ID, no WAL.
//
//	r, err := relay.New(pool, relay.Config{})
//	if err != nil { ... }
//	go r.Run(ctx) // until ctx ends
//
// Guarantees and behaviour:
//
//   - Per-key order across any number of relays: a key always falls in the
//     same relay partition, and a partition is held by one relay statement
//     at a time, so per partition the stream's seq order is commit order.
//     With outbox.Publish's per-key lock, a key's messages reach the stream
//     in the commit order of the transactions that published them.
//   - Long transactions elsewhere do not slow it: each partition has a mark,
//     an id at or below which everything is known to be moved, and the claim
//     starts above it; a mark passes an id only once no open transaction that
//     writes the outbox can still commit a row with that id (see marks.go).
//     Emptied outbox and inbox slots are TRUNCATEd (Chores), which frees
//     space even while vacuum is held back.
//   - A row the statement fails on never stalls the others: the batch is
//     halved until that row fails alone, and it is then quarantined as a
//     dead letter of subscriber "_relay" (dlq.Relay) carrying the error;
//     replaying it puts it back into the outbox. Batches are bounded by
//     bytes (MaxBatchBytes) as well as rows.
//   - Wake-ups are sent after the batch commits, in a statement of their
//     own, best effort: a full notification queue cannot fail or slow the
//     data path. Consumers poll as well.
//
// Routing (which subscribers get a message) is declared with package
// dispatcher: topic subscriptions with wildcards and JSON-path filters,
// queues, and content-based routing rules. Sends to undeclared queues, and
// router sends no rule matches, become dead letters with last_error
// 'no-route'; topic messages no subscription matches are counted in
// Stats.Dropped and dropped.
//
// With Config.Sink, the relay hands batches of one relay partition at a
// time to the Sink instead, holding that partition with a session lock
// (never a transaction) while the Sink delivers, with SinkTimeout: a Sink
// that hangs holds only its partition. Delivery is at least once; a message
// the Sink refuses alone is re-sent a bounded number of times and then
// quarantined.
package relay
