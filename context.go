package postbox

import "context"

type causeKey struct{}

// WithCause returns a context that names msg as the cause of what is
// published under it. The inbox consumer sets it around every handler, so
// messages a handler publishes through package outbox carry the incoming
// message's correlation-id (or its ID, when it has none) and a causation-id
// naming it.
func WithCause(ctx context.Context, msg *Message) context.Context {
	return context.WithValue(ctx, causeKey{}, msg)
}

// CauseFrom returns the message set by WithCause, or nil.
func CauseFrom(ctx context.Context) *Message {
	m, _ := ctx.Value(causeKey{}).(*Message)
	return m
}

// CorrelationID is msg's correlation-id header, or its ID when it has none:
// the first message of a conversation correlates to itself.
func (m *Message) CorrelationID() string {
	if id := m.Headers[HeaderCorrelationID]; id != "" {
		return id
	}
	return m.ID.String()
}
