package jetstream

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
)

// NATS headers the Sink sets on every message besides the message's own
// postbox headers, and the Consumer reads back. The message ID travels in
// Nats-Msg-Id (natsjs.MsgIDHeader), which the stream deduplicates on.
const (
	// HeaderTopic is the postbox topic, or the queue name of a send.
	HeaderTopic = "postbox-topic"
	// HeaderType is the message's Type; absent when empty.
	HeaderType = "postbox-type"
	// HeaderKey is the message's Key; absent when empty.
	HeaderKey = "postbox-key"
	// HeaderCreatedAt is when the message was published, RFC 3339 with
	// nanoseconds, in UTC.
	HeaderCreatedAt = "postbox-created-at"
)

// expectedStreamHeader makes the server refuse a message that would land
// in another stream (natsjs.ExpectedStreamHeader).
const expectedStreamHeader = "Nats-Expected-Stream"

// own reports whether a header name belongs to the NATS message rather
// than to the postbox message: NATS's own Nats-* headers, which change how
// the server treats a message, and the four above.
func own(name string) bool {
	if len(name) >= 5 && strings.EqualFold(name[:5], "nats-") {
		return true
	}
	switch name {
	case HeaderTopic, HeaderType, HeaderKey, HeaderCreatedAt:
		return true
	}
	return false
}

// DefaultSubject is the subject a message goes to unless
// SinkConfig.Subject says otherwise: "postbox.topic.<topic>" for topic
// messages and "postbox.queue.<queue>" for sends. One stream on
// "postbox.>" then takes everything, and a consumer's filter subject picks
// topics the way a postbox subscription does: postbox's "order.*" is
// "postbox.topic.order.*" and "order.#" is "postbox.topic.order.>" (which,
// unlike '#', needs at least one more segment).
func DefaultSubject(e *dispatcher.Envelope) string {
	if e.Queue {
		return "postbox.queue." + e.Topic
	}
	return "postbox.topic." + e.Topic
}

// natsMsg builds the NATS message for e.
func natsMsg(subject, stream string, e *dispatcher.Envelope) *nats.Msg {
	h := make(nats.Header, len(e.Headers)+6)
	for k, v := range e.Headers {
		if !own(k) {
			h[k] = []string{v}
		}
	}
	h[natsjs.MsgIDHeader] = []string{e.ID.String()}
	h[HeaderTopic] = []string{e.Topic}
	if e.Type != "" {
		h[HeaderType] = []string{e.Type}
	}
	if e.Key != "" {
		h[HeaderKey] = []string{e.Key}
	}
	if !e.CreatedAt.IsZero() {
		h[HeaderCreatedAt] = []string{e.CreatedAt.UTC().Format(time.RFC3339Nano)}
	}
	if stream != "" {
		h[expectedStreamHeader] = []string{stream}
	}
	return &nats.Msg{Subject: subject, Data: e.Payload, Header: h}
}

// errNoID is the reason a message without a postbox message ID is
// terminated: without an ID it cannot be deduplicated.
var errNoID = errors.New("no postbox message ID (a UUID in Nats-Msg-Id)")

// decode turns a NATS message from the Sink back into a postbox message.
// Messages from other publishers work too if they carry a UUID in
// Nats-Msg-Id; the topic is then the subject.
func decode(subject string, h nats.Header, data []byte) (*postbox.Message, error) {
	id, err := uuid.Parse(h.Get(natsjs.MsgIDHeader))
	if err != nil || id == uuid.Nil {
		return nil, errNoID
	}
	m := &postbox.Message{
		ID:      id,
		Topic:   h.Get(HeaderTopic),
		Type:    h.Get(HeaderType),
		Key:     h.Get(HeaderKey),
		Payload: data,
	}
	if m.Topic == "" {
		m.Topic = subject
	}
	if s := h.Get(HeaderCreatedAt); s != "" {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return nil, fmt.Errorf("header %s: %w", HeaderCreatedAt, err)
		}
		m.CreatedAt = t
	}
	for k, v := range h {
		if own(k) || len(v) == 0 {
			continue
		}
		if m.Headers == nil {
			m.Headers = make(map[string]string, len(h))
		}
		m.Headers[k] = v[0]
	}
	return m, nil
}
