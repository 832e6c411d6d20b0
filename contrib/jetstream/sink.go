package jetstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/postbox-dev/postbox/dispatcher"
)

// SinkConfig configures a Sink. Zero values mean the defaults.
type SinkConfig struct {
	// Subject maps a message to the subject it is published to. Default
	// DefaultSubject. It must return a valid subject with no wildcards,
	// captured by a stream; a message it maps badly fails its batch on
	// every try, which stops the relay partition it is in.
	Subject func(e *dispatcher.Envelope) string
	// Stream, if set, is the stream every message must land in: each
	// publish carries Nats-Expected-Stream, so a subject that another
	// stream captures fails the batch instead of landing there.
	Stream string
	// MaxInFlight bounds the publishes waiting for their PubAck. Default
	// 512. At most one of them per key, whatever this is. Keep it at most
	// the JetStream context's PublishAsyncMaxPending (default 4000).
	MaxInFlight int
	// Timeout bounds one Deliver whose context has no deadline. Default
	// 30s. The relay normally gives one (relay.Config.SinkTimeout).
	Timeout time.Duration
	// Logger receives failed batches. Default: silent.
	Logger *slog.Logger
}

// Default settings.
const (
	DefaultMaxInFlight = 512
	DefaultTimeout     = 30 * time.Second
)

func (c SinkConfig) withDefaults() (SinkConfig, error) {
	if c.Subject == nil {
		c.Subject = DefaultSubject
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.MaxInFlight < 1:
		return c, fmt.Errorf("jetstream: SinkConfig.MaxInFlight %d: want at least 1", c.MaxInFlight)
	case c.Timeout < 0:
		return c, fmt.Errorf("jetstream: SinkConfig.Timeout %s: negative", c.Timeout)
	}
	return c, nil
}

// SinkStats are a Sink's counters since it was created.
type SinkStats struct {
	Batches    int64 // Deliver calls that returned nil
	Published  int64 // messages the stream stored
	Duplicates int64 // messages the stream dropped as already stored (PubAck.Duplicate)
	Failed     int64 // Deliver calls that returned an error
}

// Sink publishes the relay's messages to NATS JetStream. Set it as
// relay.Config.Sink. It is safe for concurrent use.
type Sink struct {
	js  natsjs.JetStream
	cfg SinkConfig

	batches, published, duplicates, failed atomic.Int64
}

// NewSink returns a Sink publishing through js.
func NewSink(js natsjs.JetStream, cfg SinkConfig) (*Sink, error) {
	if js == nil {
		return nil, errors.New("jetstream: nil JetStream")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Sink{js: js, cfg: cfg}, nil
}

// Stats returns the sink's counters.
func (s *Sink) Stats() SinkStats {
	return SinkStats{
		Batches:    s.batches.Load(),
		Published:  s.published.Load(),
		Duplicates: s.duplicates.Load(),
		Failed:     s.failed.Load(),
	}
}

// Deliver publishes batch and returns nil once the stream has acknowledged
// every message, as stored or as a duplicate it already had.
//
// Publishes are pipelined, up to MaxInFlight at once, but a key has at
// most one publish without its PubAck: the next message of a key is sent
// only after the previous one was acknowledged. So when a publish fails,
// no later message of its key has been stored, and the relay's retry of
// the batch stores the key's messages in order (the stream drops those it
// already has by Nats-Msg-Id). Messages without a key are independent.
//
// On the first failure Deliver stops publishing, waits for the publishes in
// flight (their acks still count in Stats) and returns the error.
func (s *Sink) Deliver(ctx context.Context, batch []dispatcher.Envelope) error {
	if len(batch) == 0 {
		return nil
	}
	if _, ok := ctx.Deadline(); !ok && s.cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.Timeout)
		defer cancel()
	}
	p := s.newPublication(batch)
	err := p.run(ctx)
	s.published.Add(p.stored)
	s.duplicates.Add(p.duplicates)
	if err != nil {
		s.failed.Add(1)
		err = fmt.Errorf("jetstream: deliver %d messages (%d acknowledged): %w", len(batch), p.stored+p.duplicates, err)
		s.cfg.Logger.Error("jetstream sink: batch failed", "err", err)
		return err
	}
	s.batches.Add(1)
	return nil
}

// publication is one Deliver in progress.
type publication struct {
	s     *Sink
	batch []dispatcher.Envelope
	// next[i] is the index of the next message of batch[i]'s key, or -1.
	next []int
	// ready holds indexes of messages that may be published now, in the
	// order they became ready: at first every key's first message and
	// every message without a key, in batch order.
	ready []int
	// inflight holds the publishes waiting for their PubAck, oldest
	// first. The server answers one connection's publishes in order, so
	// waiting for the oldest loses nothing.
	inflight []pending

	stored, duplicates int64
}

type pending struct {
	i   int
	ack natsjs.PubAckFuture
}

func (s *Sink) newPublication(batch []dispatcher.Envelope) *publication {
	p := &publication{
		s:        s,
		batch:    batch,
		next:     make([]int, len(batch)),
		ready:    make([]int, 0, len(batch)),
		inflight: make([]pending, 0, min(len(batch), s.cfg.MaxInFlight)),
	}
	last := make(map[string]int) // key -> index of its latest message so far
	for i := range batch {
		p.next[i] = -1
		k := batch[i].Key
		if k == "" {
			p.ready = append(p.ready, i)
			continue
		}
		if j, ok := last[k]; ok {
			p.next[j] = i
		} else {
			p.ready = append(p.ready, i)
		}
		last[k] = i
	}
	return p
}

// run publishes until every message is acknowledged, or the first error.
func (p *publication) run(ctx context.Context) error {
	var failure error
	for {
		for failure == nil && len(p.ready) > 0 && len(p.inflight) < p.s.cfg.MaxInFlight {
			i := p.ready[0]
			p.ready = p.ready[1:]
			e := &p.batch[i]
			f, err := p.s.js.PublishMsgAsync(natsMsg(p.s.cfg.Subject(e), p.s.cfg.Stream, e))
			if err != nil {
				failure = fmt.Errorf("publish message %s: %w", e.ID, err)
				break
			}
			p.inflight = append(p.inflight, pending{i: i, ack: f})
		}
		if len(p.inflight) == 0 {
			return failure
		}
		oldest := p.inflight[0]
		p.inflight = p.inflight[1:]
		select {
		case ack := <-oldest.ack.Ok():
			if ack.Duplicate {
				p.duplicates++
			} else {
				p.stored++
			}
			if n := p.next[oldest.i]; n >= 0 {
				p.ready = append(p.ready, n)
			}
		case err := <-oldest.ack.Err():
			if failure == nil {
				failure = fmt.Errorf("message %s: %w", p.batch[oldest.i].ID, err)
			}
		case <-ctx.Done():
			// The publishes still in flight may yet be stored; the
			// relay's retry finds them in the duplicate window.
			return errors.Join(failure, fmt.Errorf("waiting for %d PubAcks: %w", len(p.inflight)+1, ctx.Err()))
		}
	}
}
