// Package dispatcher declares where messages go: queues, topic
// subscribers and their subscriptions, content-based routing rules, and
// the Sink the relay can hand messages to instead.
//
//	// a queue: point-to-point, one consumer group (outbox.Send)
//	err := dispatcher.DeclareQueue(ctx, pool, "process-order", dispatcher.Options{MaxAttempts: 5})
//
//	// a topic subscriber with a wildcard subscription and a filter
//	err = dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{
//		Subscriber: "fraud-check",
//		Topic:      "order.#",
//		Filter:     `$.totalAmount ? (@ >= 10000)`,
//	})
//
// Declarations live in the database (postbox.subscribers,
// postbox.subscriptions, postbox.routes), so every relay and consumer
// process, the postbox binary and plain SQL see the same routing; the relay
// evaluates it inside its statement, payloads never traveling through Go.
//
// Guarantees:
//
//   - Names and patterns are validated before anything is written (errors
//     match postbox.ErrInvalid); a filter is parsed by PostgreSQL first, so a
//     malformed one is refused at Subscribe, never at the relay.
//   - A subscriber's Options (retries, backoff, dedup window, what a key
//     does while one of its messages is dead) are read by every consumer,
//     re-read within a minute of a change.
//   - Partition and KeyHash are Kafka's default partitioner (murmur2), so a
//     Kafka sink and postbox agree on partitions.
package dispatcher
