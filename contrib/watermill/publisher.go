package watermill

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/outbox"
)

// DB is what a Publisher writes through when a message's context carries
// no transaction: *pgxpool.Pool and *pgx.Conn satisfy it.
type DB interface {
	postbox.DBTX
	Begin(ctx context.Context) (pgx.Tx, error)
}

// PublisherConfig configures a Publisher. The zero value is usable.
type PublisherConfig struct {
	// Key returns the postbox partition key of a message: messages that
	// share a key are handled one at a time, in publish order, by each
	// consumer group. Nil, or an empty key, means no order: messages are
	// handled concurrently.
	Key func(topic string, msg *message.Message) string
	// Limits bound what one message may carry (postbox.Limits); the zero
	// value means postbox's defaults.
	Limits postbox.Limits
}

// ErrPublisherClosed is returned by Publish after Close.
var ErrPublisherClosed = errors.New("watermill: publisher closed")

// Publisher is a Watermill message.Publisher that writes to the postbox
// outbox. A message whose context carries a transaction (WithTx, or the
// context of a message from a Subscriber) is written through it and exists
// if and only if that transaction commits; the other messages of one
// Publish call are written together, in one transaction of their own.
// The relay then moves them to every consumer group subscribed to the
// topic.
type Publisher struct {
	db     DB
	cfg    PublisherConfig
	out    outbox.Outbox
	closed atomic.Bool
}

var _ message.Publisher = (*Publisher)(nil)

// NewPublisher returns a publisher that writes messages without a
// transaction in their context through db. db may be nil when every
// message will carry one.
func NewPublisher(db DB, cfg PublisherConfig) (*Publisher, error) {
	return &Publisher{db: db, cfg: cfg, out: outbox.Outbox{Limits: cfg.Limits}}, nil
}

// Publish writes msgs to the Watermill topic (see TopicName for how it
// becomes a postbox topic). It returns when they are written: committed,
// for messages without a transaction in their context, or part of that
// transaction otherwise. Every message is checked before any is written.
func (p *Publisher) Publish(topic string, msgs ...*message.Message) error {
	if p.closed.Load() {
		return ErrPublisherClosed
	}
	name, err := TopicName(topic)
	if err != nil {
		return fmt.Errorf("watermill: publish: %w", err)
	}
	type pending struct {
		ctx context.Context
		tx  pgx.Tx
		msg *postbox.Message
	}
	all := make([]pending, len(msgs))
	var free []*postbox.Message // messages without a transaction
	var freeCtx context.Context
	sameCause := true
	for i, m := range msgs {
		key := ""
		if p.cfg.Key != nil {
			key = p.cfg.Key(topic, m)
		}
		pm := toPostbox(name, key, m)
		if err := p.cfg.Limits.Validate(pm); err != nil {
			return fmt.Errorf("watermill: publish message %q to %q: %w", m.UUID, topic, err)
		}
		ctx := m.Context()
		tx, _ := TxFromContext(ctx)
		all[i] = pending{ctx: ctx, tx: tx, msg: pm}
		if tx == nil {
			if freeCtx == nil {
				freeCtx = ctx
			}
			sameCause = sameCause && postbox.CauseFrom(ctx) == postbox.CauseFrom(freeCtx)
			free = append(free, pm)
		}
	}
	if len(free) > 0 && p.db == nil {
		return fmt.Errorf("watermill: publish to %q: %d messages carry no transaction in their context and the publisher has no DB", topic, len(free))
	}
	for i, pe := range all {
		if pe.tx == nil {
			continue
		}
		if err := p.out.Publish(pe.ctx, pe.tx, pe.msg); err != nil {
			return fmt.Errorf("watermill: publish message %q to %q: %w", msgs[i].UUID, topic, err)
		}
	}
	switch {
	case len(free) == 0:
		return nil
	case len(free) == 1:
		// One statement is its own transaction.
		if err := p.out.Publish(freeCtx, p.db, free[0]); err != nil {
			return fmt.Errorf("watermill: publish to %q: %w", topic, err)
		}
		return nil
	}
	err = pgx.BeginFunc(freeCtx, p.db, func(tx pgx.Tx) error {
		if sameCause {
			// One COPY; the cause (for correlation headers) is read
			// from the context, the same for all.
			return p.out.PublishBatch(freeCtx, tx, free)
		}
		for _, pe := range all {
			if pe.tx == nil {
				if err := p.out.Publish(pe.ctx, tx, pe.msg); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("watermill: publish %d messages to %q: %w", len(free), topic, err)
	}
	return nil
}

// Close makes later Publish calls fail. It does not close the DB, which
// belongs to the caller.
func (p *Publisher) Close() error {
	p.closed.Store(true)
	return nil
}
