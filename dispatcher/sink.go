package dispatcher

import (
	"context"

	"github.com/postbox-dev/postbox"
)

// Sink takes messages from the relay instead of the PostgreSQL inbox: a
// NATS JetStream or Kafka producer, when one database is not enough. Set it
// in relay.Config.Sink.
//
// Deliver must durably accept every envelope before it returns nil. The
// relay deletes the envelopes from the outbox only then, so an error, a
// timeout (relay.Config.SinkTimeout, through ctx) or a crash delivers them
// again: at-least-once. Consumers on the other side deduplicate by message
// ID (inbox.HandleOnce) to make effects exactly-once.
//
// A failing batch is handed over again in halves until the message it
// fails on is alone. Return an error marked postbox.Permanent for a
// message the broker will never take (too large, refused by policy): alone,
// it is quarantined at once as a dead letter of "_relay", replayable. Any
// other error is tried again; a message refused alone five times, over at
// least five SinkTimeouts, is quarantined too.
//
// A batch holds the oldest due messages of one relay partition, in outbox
// order; the relay holds that partition (a session lock, no transaction)
// until Deliver returns, so two relays never deliver messages of one key at
// once, and a sink that preserves the order of what it is given preserves
// per-key order. Messages whose DeliverAt is still ahead wait in
// postbox.scheduled until due; unlike on the inbox path, they do not hold
// back later messages of their key meanwhile.
type Sink interface {
	Deliver(ctx context.Context, batch []Envelope) error
}

// Envelope is one outbox message handed to a Sink.
type Envelope struct {
	postbox.Message
	// Queue is true for a point-to-point send to the queue named Topic.
	Queue bool
	// KeyHash is Kafka's toPositive(murmur2(Key)) — or of the message ID
	// when Key is empty — so KeyHash % partitions is the partition Kafka's
	// default partitioner picks.
	KeyHash int32
}

// SinkFunc adapts a function to Sink.
type SinkFunc func(ctx context.Context, batch []Envelope) error

// Deliver calls f.
func (f SinkFunc) Deliver(ctx context.Context, batch []Envelope) error { return f(ctx, batch) }
