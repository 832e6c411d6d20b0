// Package jetstream carries postbox messages across NATS JetStream: a
// relay Sink that publishes the outbox to a stream, and a Consumer that
// hands a stream's messages to an inbox.Handler with exactly-once effects.
//
// The outbox stays the source of truth. The relay claims a batch, the Sink
// publishes it and waits for every PubAck, and only then are the outbox
// rows deleted; a crash or an error in between publishes the batch again.
// Each message carries its postbox ID in Nats-Msg-Id, so the stream's
// duplicate window drops the re-sends, and the Consumer runs each message
// through inbox.HandleOnce, which drops whatever is left.
//
// Its name clashes with github.com/nats-io/nats.go/jetstream; import one of
// them under another name:
//
//	import (
//		"github.com/nats-io/nats.go/jetstream"
//		pbjetstream "github.com/postbox-dev/postbox/contrib/jetstream"
//	)
//
//	js, _ := jetstream.New(nc)
//	js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
//		Name: "POSTBOX", Subjects: []string{"postbox.>"},
//		Duplicates: 10 * time.Minute, // longer than any relay retry
//	})
//	sink, _ := pbjetstream.NewSink(js, pbjetstream.SinkConfig{Stream: "POSTBOX"})
//	r, _ := relay.New(pool, relay.Config{Sink: sink})
//	go r.Run(ctx)
//
//	cons, _ := js.CreateOrUpdateConsumer(ctx, "POSTBOX", jetstream.ConsumerConfig{
//		Durable: "inventory", AckPolicy: jetstream.AckExplicitPolicy,
//		FilterSubject: "postbox.topic.order.>",
//	})
//	c, _ := pbjetstream.NewConsumer(pool, cons, pbjetstream.ConsumerConfig{
//		Subscriber: "inventory",
//		Handler: inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
//			_, err := tx.Exec(ctx, `UPDATE stock SET reserved = reserved + 1 WHERE order_id = $1`, d.Key)
//			return err
//		}),
//	})
//	go c.Run(ctx)
//
// # Messages on the wire
//
// A message goes to the subject SinkConfig.Subject picks (DefaultSubject:
// postbox.topic.<topic> or postbox.queue.<queue>). Its data is the payload;
// its headers are the message's own headers plus Nats-Msg-Id (the message
// ID), postbox-topic, postbox-type and postbox-key (when not empty) and
// postbox-created-at (RFC 3339, UTC). Message headers named Nats-* are not
// carried: they would change how the server treats the message.
//
// # Guarantees
//
//   - No loss: a batch leaves the outbox only after the stream acknowledged
//     every message of it.
//   - No duplicates in the stream, within its duplicate window
//     (StreamConfig.Duplicates, default 2 minutes). The window must be
//     longer than the longest time between a message's first publish and
//     its last re-send: a relay's retries after errors and timeouts, and
//     the time a crashed relay stays down with a batch published but not
//     yet deleted. A re-send past the window is stored again; the Consumer
//     still handles it only once (HandleOnce remembers IDs for the
//     subscriber's dedup window, 7 days by default), but other readers of
//     the stream see it twice.
//   - Per-key order in the stream: the Sink has at most one unacknowledged
//     publish per key, so a failed publish can never be overtaken by a
//     later message of its key, and the relay hands a key's messages over
//     in publish order.
//   - Exactly-once effects: the Consumer acknowledges a message only after
//     the transaction that ran the handler and recorded the message ID has
//     committed; a redelivered message whose ID is recorded is acknowledged
//     without running the handler.
//   - Per-key order when handling: one Consumer handles a key's messages
//     one at a time, in stream order. When a handler fails, the message is
//     redelivered after a backoff (NakWithDelay), and the key's later
//     messages wait in the Consumer (kept alive with InProgress) until it
//     succeeds or is terminated. A Consumer stopping handles what it had
//     fetched, so order holds across a graceful restart, except for a key
//     whose failed message then waits for redelivery: the next Consumer
//     may get a later message of that key first. A Consumer killed
//     outright leaves its unacknowledged messages to come back after
//     AckWait, possibly after later messages of their keys. Effects still
//     happen once; for strict order across such restarts, see the README
//     (MaxAckPending 1 per partition of subjects).
//
// A handler error marked postbox.Permanent terminates the message (Term):
// JetStream never delivers it to this consumer again and publishes a
// $JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED advisory; the message stays
// in the stream under the stream's retention, and no postbox dead letter
// is written. So does a message without a UUID in Nats-Msg-Id, and a
// failed message on its last delivery when the JetStream consumer sets
// MaxDeliver.
package jetstream
