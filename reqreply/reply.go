package reqreply

import (
	"context"
	"errors"
	"fmt"
	"maps"

	"github.com/google/uuid"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/invalid"
	"github.com/postbox-dev/postbox/outbox"
)

// HeaderReplier names the subscriber that sent a reply (Reply sets it), so
// that a gatherer can tell the repliers of one request apart.
const HeaderReplier = "x-replier"

// Errors callers branch on.
var (
	// ErrTimeout: no reply came within the Request's timeout. The reply
	// may still come; it then goes to Config.Handler, or becomes a dead
	// letter with ErrLateReply.
	ErrTimeout = errors.New("reqreply: no reply in time")
	// ErrLateReply is the last error of a reply that no Request waited for
	// when the Requester has no Handler: it became a dead letter of the
	// reply queue, where dlq.List finds it.
	ErrLateReply = errors.New("reqreply: late reply: no request waits for it and the requester has no Handler")
	// ErrNoReplyTo: Reply was given a delivery without a valid reply-to
	// header. Reply returns it marked postbox.Permanent: a request nobody
	// can answer is an invalid message, and retrying cannot fix it.
	ErrNoReplyTo = errors.New("reqreply: the request has no valid reply-to header")
	// ErrNoCorrelation: a reply without a correlation-id header; it is
	// dead-lettered at once.
	ErrNoCorrelation = errors.New("reqreply: the reply has no correlation-id header")
	// ErrStopped: the Requester's Run has returned.
	ErrStopped = errors.New("reqreply: the requester has stopped")
)

// replyNamespace derives reply IDs (UUIDv5) from their requests.
var replyNamespace = uuid.MustParse("7f3c2b8e-5d1a-4e6f-9b0c-2a4d6e8f1c3b")

// ReplyID is the ID Reply gives the reply of subscriber to request: the
// same for every attempt, so a request answered twice yields one reply
// (the requester's inbox drops the second copy).
func ReplyID(request uuid.UUID, subscriber string) uuid.UUID {
	return uuid.NewSHA1(replyNamespace, append(request[:], subscriber...))
}

// Reply sends msg as the reply to request d through tx, the transaction
// the request is handled in: the reply exists if and only if the request's
// handling commits, with the handler's other effects. A replier that
// crashes mid-handling sends nothing; the redelivered request is answered
// once.
//
// Reply addresses msg to d's reply-to queue (msg.Topic is overwritten),
// gives it d's correlation-id (or d's ID, when it has none), names d as its
// causation-id and d.Subscriber in HeaderReplier, and keys it like d
// unless msg.Key is set. An empty msg.ID becomes ReplyID(d.ID,
// d.Subscriber). msg.Headers is not modified; msg.Headers and msg.Topic of
// msg as sent are set on msg.
//
// A request without a valid reply-to header is answered with
// postbox.Permanent(ErrNoReplyTo): return it from the handler, and the
// request becomes a dead letter at once.
func Reply(ctx context.Context, tx postbox.DBTX, d *inbox.Delivery, msg *postbox.Message) error {
	if d == nil {
		return invalid.Nil("d")
	}
	if msg == nil {
		return invalid.Nil("msg")
	}
	to := d.Headers[postbox.HeaderReplyTo]
	if postbox.ValidateName("reply-to", to) != nil {
		return postbox.Permanent(fmt.Errorf("%w: request %s: %q", ErrNoReplyTo, d.ID, to))
	}
	h := make(map[string]string, len(msg.Headers)+3)
	maps.Copy(h, msg.Headers)
	h[postbox.HeaderCorrelationID] = d.CorrelationID()
	h[postbox.HeaderCausationID] = d.ID.String()
	h[HeaderReplier] = d.Subscriber
	msg.Headers = h
	msg.Topic = to
	if msg.Key == "" {
		msg.Key = d.Key
	}
	if msg.ID == uuid.Nil {
		msg.ID = ReplyID(d.ID, d.Subscriber)
	}
	return outbox.Send(ctx, tx, msg)
}
