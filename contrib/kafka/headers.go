package kafka

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
)

// Record headers the Sink sets on every record besides the message's own
// postbox headers, and the Consumer reads back. The key is the record key;
// the payload, its value.
const (
	// HeaderMessageID is the postbox message ID, which consumers
	// deduplicate on.
	HeaderMessageID = "postbox-message-id"
	// HeaderTopic is the postbox topic, or the queue name of a send.
	HeaderTopic = "postbox-topic"
	// HeaderType is the message's Type; absent when empty.
	HeaderType = "postbox-type"
	// HeaderCreatedAt is when the message was published, RFC 3339 with
	// nanoseconds, in UTC. The record timestamp is the same instant in
	// milliseconds.
	HeaderCreatedAt = "postbox-created-at"
)

// own reports whether a record header is one of the Sink's own.
func own(name string) bool {
	switch name {
	case HeaderMessageID, HeaderTopic, HeaderType, HeaderCreatedAt:
		return true
	}
	return false
}

// DefaultTopic is the Kafka topic a message goes to unless
// SinkConfig.Topic says otherwise: its postbox topic, or for a send its
// queue name. postbox names (lower-case letters, digits, '.', '_', '-')
// are valid Kafka topic names.
func DefaultTopic(e *dispatcher.Envelope) string { return e.Topic }

// record builds the record for e.
func record(topic string, partition int32, e *dispatcher.Envelope) *kgo.Record {
	r := &kgo.Record{
		Topic:     topic,
		Partition: partition,
		Value:     e.Payload,
		Timestamp: e.CreatedAt,
		Headers:   make([]kgo.RecordHeader, 0, len(e.Headers)+4),
	}
	if e.Key != "" {
		r.Key = []byte(e.Key)
	}
	// Sorted, so that a message's records look the same every time.
	names := make([]string, 0, len(e.Headers))
	for k := range e.Headers {
		if !own(k) {
			names = append(names, k)
		}
	}
	slices.Sort(names)
	for _, k := range names {
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: k, Value: []byte(e.Headers[k])})
	}
	r.Headers = append(r.Headers,
		kgo.RecordHeader{Key: HeaderMessageID, Value: []byte(e.ID.String())},
		kgo.RecordHeader{Key: HeaderTopic, Value: []byte(e.Topic)})
	if e.Type != "" {
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: HeaderType, Value: []byte(e.Type)})
	}
	if !e.CreatedAt.IsZero() {
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: HeaderCreatedAt, Value: []byte(e.CreatedAt.UTC().Format(time.RFC3339Nano))})
	}
	return r
}

// errNoID is the reason a record without a postbox message ID is skipped:
// without an ID it cannot be deduplicated.
var errNoID = errors.New("no postbox message ID (a UUID in header " + HeaderMessageID + ")")

// decode turns a record from the Sink back into a postbox message.
// Records from other producers work too if they carry a UUID in
// postbox-message-id; the topic is then the record's topic.
func decode(r *kgo.Record) (*postbox.Message, error) {
	m := &postbox.Message{Key: string(r.Key), Payload: r.Value}
	for _, h := range r.Headers {
		v := string(h.Value)
		switch h.Key {
		case HeaderMessageID:
			id, err := uuid.Parse(v)
			if err != nil {
				return nil, errNoID
			}
			m.ID = id
		case HeaderTopic:
			m.Topic = v
		case HeaderType:
			m.Type = v
		case HeaderCreatedAt:
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return nil, fmt.Errorf("header %s: %w", HeaderCreatedAt, err)
			}
			m.CreatedAt = t
		default:
			if m.Headers == nil {
				m.Headers = make(map[string]string, len(r.Headers))
			}
			m.Headers[h.Key] = v
		}
	}
	if m.ID == uuid.Nil {
		return nil, errNoID
	}
	if m.Topic == "" {
		m.Topic = r.Topic
	}
	if m.CreatedAt.IsZero() {
		m.CreatedAt = r.Timestamp
	}
	return m, nil
}
