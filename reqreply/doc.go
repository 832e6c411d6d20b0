// Package reqreply is request/reply over postbox queues: a requester sends
// a command to a queue with reply-to and correlation-id headers and waits
// for the reply; the replier answers from its handler, in the transaction
// of its other effects.
//
// The replier is an ordinary inbox handler that calls Reply:
//
//	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
//		q, err := postbox.Decode[StockQuery](d.Payload)
//		if err != nil {
//			return err
//		}
//		var n int
//		if err := tx.QueryRow(ctx, `SELECT on_hand FROM stock WHERE sku = $1`, q.SKU).Scan(&n); err != nil {
//			return err
//		}
//		payload, _ := postbox.JSON(StockLevel{SKU: q.SKU, OnHand: n})
//		return reqreply.Reply(ctx, tx, d, &postbox.Message{Type: "stock.level.v1", Payload: payload})
//	})
//
// The requester runs a Requester, which owns a reply queue, and asks:
//
//	r, err := reqreply.NewRequester(pool, reqreply.Config{Name: "checkout", Timeout: 5 * time.Second})
//	go r.Run(ctx)
//	reply, err := r.Request(ctx, &postbox.Message{Topic: "stock-queries", Payload: query})
//	if errors.Is(err, reqreply.ErrTimeout) { ... }
//
// or, asynchronously, sends through its own transaction and gets the reply
// in Config.Handler, with exactly-once effects:
//
//	err := r.Send(ctx, tx, &postbox.Message{Topic: "stock-queries", Payload: query})
//
// Guarantees:
//
//   - One reply per request. Reply writes through the replier's
//     transaction, so the reply exists if and only if the request's
//     handling commits; a replier that crashes mid-handling sends nothing,
//     and the redelivered request is answered once. The reply's ID is
//     derived from the request's and the replier's (ReplyID), so even a
//     request answered twice yields one reply at the requester.
//   - No mix-ups. A Request waits on its own correlation-id (its message
//     ID) in its own Requester's reply queue. A reply that comes after its
//     Request gave up is never handed to another Request: it goes to
//     Config.Handler, or, without one, becomes a dead letter of the reply
//     queue (last error ErrLateReply), where dlq lists it. A reply handed to
//     a Request that is redelivered (its batch failed after the hand-over)
//     is recognised and dropped, within ten minutes.
//   - Reply queues are cleaned up. Each Requester declares a queue of its
//     own, Name + ".reply." + a random suffix, and holds a session advisory
//     lock on it while it runs. A Requester whose session ended — stopped,
//     or crashed — leaves its queue behind; the Requesters of the same Name
//     that still run find it by the free lock, hand the replies left in it
//     to their Handler (as late replies), and drop it once it has been
//     orphaned for Config.Expiry with nothing pending. Replies that arrive
//     after that are no-route dead letters of the queue's name: recorded,
//     never lost.
//
// What a Request's caller does with its reply happens outside the reply's
// transaction: if the requesting process crashes between receiving a
// reply and acting on it, the reply is not handed out again. Use Send and
// a Handler where the reaction must be exactly once.
//
// The reply queue's consumer is an inbox.Consumer: replies are deduplicated
// and retried like any delivery, and Requesters need a relay running, as
// every postbox consumer does. A Requester uses two connections outside its
// pool: the consumer's LISTEN connection and the lock's.
package reqreply
