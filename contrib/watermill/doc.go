// Package watermill runs Watermill (github.com/ThreeDotsLabs/watermill)
// over postbox: a message.Publisher that writes to the transactional
// outbox and a message.Subscriber that consumes through the exactly-once
// inbox, so a Watermill service gets postbox's guarantees without changing
// its handlers.
//
//	pub, _ := watermill.NewPublisher(pool, watermill.PublisherConfig{})
//	sub, _ := watermill.NewSubscriber(pool, watermill.SubscriberConfig{
//		ConsumerGroup: "billing",
//		RunRelay:      true, // or run `postbox relay` beside the service
//	})
//	router, _ := message.NewRouter(message.RouterConfig{}, logger)
//	router.AddMiddleware(watermill.PropagateTx)
//	router.AddHandler("invoice", "orders.created", sub, "invoices.issued", pub,
//		func(msg *message.Message) ([]*message.Message, error) {
//			tx, _ := watermill.TxFromContext(msg.Context())
//			_, err := tx.Exec(msg.Context(), `INSERT INTO invoices (order_id) VALUES ($1)`, msg.Payload)
//			return []*message.Message{message.NewMessage(uuid.NewString(), msg.Payload)}, err
//		})
//	router.Run(ctx)
//
// Publishing inside a business transaction:
//
//	msg.SetContext(watermill.WithTx(ctx, tx))
//	err := pub.Publish("orders.created", msg) // exists if and only if tx commits
//
// # Guarantees
//
//   - Publish writes through the transaction in the message's context
//     (WithTx, or that of a message being handled), else in a transaction
//     of its own on the Publisher's DB: the message exists if and only if
//     that transaction commits.
//   - Each message of a topic reaches every consumer group subscribed to
//     the topic when the relay moved it, and one Subscriber of each group.
//     Subscribe (or SubscribeInitialize) before publishing: messages are
//     routed when the relay moves them, and a topic no group subscribes to
//     routes nowhere.
//   - A message's context carries its delivery's transaction
//     (TxFromContext). Ack commits what the handler wrote through it
//     together with the mark that the message is handled; Nack rolls it
//     back and counts a failed attempt, retried after the group's backoff
//     (SubscriberConfig.Options) and dead-lettered after its MaxAttempts
//     (list and replay them with package dlq, under SubscriberName). A
//     message neither acked nor nacked within AckTimeout, or still unacked
//     when its subscription ends, counts as a failed attempt too.
//   - Delivery to the Watermill handler is at least once: a crash or a lost
//     connection after an Ack delivers the message again. Effects written
//     through the transaction happen once, and a redelivered message ID is
//     dropped within the group's dedup window.
//   - Messages with the same key (PublisherConfig.Key) are delivered to a
//     group one at a time, in publish order, each after the previous one's
//     Ack. Messages without a key are not ordered.
//   - Watermill UUIDs, metadata and payloads come back exactly as they were
//     published: a UUID that is not a canonical UUID string travels in
//     HeaderUUID (and gets a postbox ID derived from it, so publishing it
//     twice is deduplicated), and metadata postbox headers cannot hold as
//     they are travel in HeaderMetadata. Topics and consumer groups that are
//     not postbox names are encoded reversibly (TopicName, SubscriberName).
//
// Run a relay somewhere (SubscriberConfig.RunRelay, `postbox relay`, or
// relay.Run): without one, published messages stay in the outbox.
package watermill
