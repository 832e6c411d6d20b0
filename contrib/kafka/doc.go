// Package kafka carries postbox messages across Kafka: a relay Sink that
// produces the outbox to Kafka topics with franz-go's idempotent
// producer, and a Consumer that hands a consumer group's records to an
// inbox.Handler with exactly-once effects.
//
// The outbox stays the source of truth. The relay claims a batch, the Sink
// produces it and waits until every record is acknowledged by all in-sync
// replicas, and only then are the outbox rows deleted; a crash or an error
// in between produces the batch again. Each record carries its postbox
// message ID in a header, and the Consumer runs it through
// inbox.HandleOnce, which drops the copies.
//
//	sink, _ := kafka.NewSink(kafka.SinkConfig{}, kgo.SeedBrokers("kafka:9092"))
//	defer sink.Close()
//	r, _ := relay.New(pool, relay.Config{Sink: sink})
//	go r.Run(ctx)
//
//	c, _ := kafka.NewConsumer(pool, kafka.ConsumerConfig{
//		Subscriber: "inventory",
//		Handler: inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
//			_, err := tx.Exec(ctx, `UPDATE stock SET reserved = reserved + 1 WHERE order_id = $1`, d.Key)
//			return err
//		}),
//	}, kgo.SeedBrokers("kafka:9092"), kgo.ConsumerGroup("inventory"), kgo.ConsumeTopics("order.created"))
//	go c.Run(ctx)
//
// # Records on the wire
//
// A message goes to the topic SinkConfig.Topic picks (DefaultTopic: its
// postbox topic or queue name), to partition KeyHash % the topic's
// partition count: Kafka's default partitioner for the message's key
// (murmur2), or for a message without a key, of its ID. The record key is
// the message key (none when empty), the value its payload, the timestamp
// its CreatedAt; the headers are the message's own, sorted by name, then
// postbox-message-id, postbox-topic, postbox-type (when not empty) and
// postbox-created-at (RFC 3339, UTC).
//
// # Guarantees
//
//   - No loss: a batch leaves the outbox only after every record of it
//     was acknowledged (acks=all, the idempotent producer's setting).
//   - No duplicates from the producer's own retries (idempotence), but a
//     batch the relay re-sends — after a timeout, an error, or a crash
//     between producing and deleting — is stored again. The Consumer drops
//     the copies as long as HandleOnce remembers the ID: the subscriber's
//     dedup window, 7 days by default, which must be longer than the time
//     a batch can wait to be re-sent. Other readers of the topic see the
//     copies.
//   - Per-key order: a key always maps to the same partition (as long as
//     the topic's partition count does not change), the relay hands a
//     key's messages over in publish order, and the idempotent producer
//     never stores a record after one of its partition that failed. A
//     re-sent batch repeats a run of a key's messages in the same order;
//     the copies are dropped, so handling order is publish order.
//   - Exactly-once effects: an offset is committed only after the
//     transaction that ran the handler and recorded the message ID
//     committed. A partition's records are handled one at a time, in
//     offset order; a failing record is retried in place, after a
//     backoff, holding back its partition.
//
// A handler error marked postbox.Permanent skips the record: it is logged,
// counted in ConsumerStats.Skipped and its offset committed; the record
// stays in the topic until retention removes it, and no postbox dead
// letter is written. So does a record without a postbox-message-id, and a
// failing record after ConsumerConfig.MaxAttempts when that is set.
package kafka
