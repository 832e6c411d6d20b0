package postbox

import (
	"time"

	"github.com/google/uuid"
)

// Message is the envelope postbox moves. Producers fill Topic (or address a
// queue through outbox.Send), Payload and usually Key; the rest has sensible
// defaults: an empty ID becomes a fresh UUIDv7, a zero CreatedAt becomes the
// database's transaction time.
type Message struct {
	// ID identifies the message everywhere; the inbox deduplicates on it.
	ID uuid.UUID
	// Topic is the publish/subscribe topic, or the queue name for a send.
	Topic string
	// Type names the payload's schema, e.g. "order.created.v1". Optional.
	Type string
	// Key is the partition key: messages sharing a key are handled one at a
	// time, in publish order, by each subscriber. Empty means no order.
	Key string
	// Payload is the body, opaque to postbox except for subscription filters,
	// which read it as JSON.
	Payload []byte
	// Headers carry metadata such as HeaderCorrelationID.
	Headers map[string]string
	// CreatedAt is when the message was published.
	CreatedAt time.Time
	// DeliverAt delays handling until then. Zero means at once.
	DeliverAt time.Time
}

// Standard header names.
const (
	HeaderCorrelationID = "correlation-id"
	HeaderCausationID   = "causation-id"
	HeaderReplyTo       = "reply-to"
	HeaderContentType   = "content-type"
	HeaderTraceParent   = "traceparent" // W3C Trace Context
	HeaderTraceState    = "tracestate"  // W3C Trace Context

	// Set on dead letters.
	HeaderRetryCount    = "x-retry-count"
	HeaderOriginalError = "x-original-error"
	HeaderMovedToDLQAt  = "x-moved-to-dlq-at"

	// Set on replay.
	HeaderReplayedAt  = "x-replayed-at"
	HeaderReplayCount = "x-replay-count"
)

// NewID returns a new UUIDv7 message ID: time-ordered, so IDs of messages
// published close together are close in indexes too.
func NewID() uuid.UUID {
	return uuid.Must(uuid.NewV7())
}
