package inbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/internal/handlercall"
)

// Delivery is one message for one subscriber, as a handler sees it.
type Delivery struct {
	postbox.Message
	// Subscriber is the consumer group handling the message.
	Subscriber string
	// Attempt counts from 1; above 1 the message is being retried.
	Attempt int
	// Partition is hash(Key) mod the subscriber's partitions (murmur2, as
	// Kafka).
	Partition int
	// EnqueuedAt is when the relay moved the message to the subscriber
	// (the relay statement's start): EnqueuedAt - CreatedAt is the time in
	// the outbox, now - EnqueuedAt the time waiting for a consumer. Zero
	// for HandleOnce.
	EnqueuedAt time.Time
}

// Handler handles deliveries. What it writes through tx commits in the same
// transaction that marks the delivery handled, and is rolled back if it
// returns an error (or panics). It must not commit or roll back tx.
//
// Return postbox.Permanent(err) for a message that can never succeed: it
// becomes a dead letter at once instead of being retried.
type Handler interface {
	Handle(ctx context.Context, tx pgx.Tx, d *Delivery) error
}

// HandlerFunc adapts a function to Handler, as http.HandlerFunc does.
type HandlerFunc func(ctx context.Context, tx pgx.Tx, d *Delivery) error

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, tx pgx.Tx, d *Delivery) error {
	return f(ctx, tx, d)
}

// Middleware wraps a Handler, as func(http.Handler) http.Handler does.
type Middleware func(Handler) Handler

// Chain wraps h in mw, the first outermost: Chain(h, a, b) runs a, then b,
// then h.
func Chain(h Handler, mw ...Middleware) Handler {
	for i := len(mw) - 1; i >= 0; i-- {
		h = mw[i](h)
	}
	return h
}

// Filter passes on only deliveries for which keep returns true. The others
// count as handled, with no effects: a content-based filter, like the
// subscription filters the relay applies, but in Go.
func Filter(keep func(d *Delivery) bool) Middleware {
	return func(next Handler) Handler {
		return HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *Delivery) error {
			if !keep(d) {
				return nil
			}
			return next.Handle(ctx, tx, d)
		})
	}
}

// Transform returns a handler that turns each delivery into a new message
// and writes it with deliver (outbox.Publish or outbox.Send) through the
// delivery's transaction: the new message exists if and only if the
// delivery is marked handled. A nil message from fn means "nothing to
// send". The new message carries the delivery's correlation-id.
func Transform(fn func(ctx context.Context, d *Delivery) (*postbox.Message, error),
	deliver func(ctx context.Context, db postbox.DBTX, msg *postbox.Message) error) Handler {
	return HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *Delivery) error {
		msg, err := fn(ctx, d)
		if err != nil || msg == nil {
			return err
		}
		if err := deliver(ctx, tx, msg); err != nil {
			return fmt.Errorf("inbox: transform %s: %w", d.ID, err)
		}
		return nil
	})
}

// Pipeline runs steps one after another in the delivery's transaction and
// stops at the first error, which rolls back every step's effects.
func Pipeline(steps ...Handler) Handler {
	return HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *Delivery) error {
		for _, s := range steps {
			if err := s.Handle(ctx, tx, d); err != nil {
				return err
			}
		}
		return nil
	})
}

// ErrRelease, returned by a handler (or wrapped in what it returns), hands
// the delivery back uncharged: its effects roll back, no attempt is
// counted, and it is claimed again later, with the deliveries of its order
// partition behind it. For a handler that cannot take the delivery now for
// a reason that is not the delivery's fault (it is shutting down, its
// reader went away). A handler that keeps releasing a delivery holds up its
// partition.
var ErrRelease = errors.New("inbox: delivery released")

// ErrTxOwned is returned when a handler tries to commit or roll back the
// transaction it was given: the consumer does that.
var ErrTxOwned = handlercall.ErrTxOwned

// BatchHandler handles all deliveries of a batch in one call, through the
// batch's transaction: one multi-row INSERT of effects instead of one
// statement per delivery, for those who want the raw ceiling. Deliveries
// come in the order they must be handled (per key, publish order).
//
// Returning nil means every delivery is handled: its effects commit with
// the mark. To fail some of them, return a *BatchError naming them: the
// consumer rolls back the call's effects and calls HandleBatch again with
// the others (leaving out later deliveries of a failed delivery's key,
// which wait behind it), so a failed delivery's effects never commit. Any
// other error fails the call as a whole: the consumer then halves the batch
// until the deliveries that fail alone are found; only those are charged an
// attempt. Retries, backoff, dead letters, per-key order and deduplication
// are those of Handler.
//
// HandleBatch may be called several times for one batch, with fewer
// deliveries each time; it must not commit or roll back tx.
type BatchHandler interface {
	HandleBatch(ctx context.Context, tx pgx.Tx, batch []*Delivery) error
}

// BatchHandlerFunc adapts a function to BatchHandler.
type BatchHandlerFunc func(ctx context.Context, tx pgx.Tx, batch []*Delivery) error

// HandleBatch calls f.
func (f BatchHandlerFunc) HandleBatch(ctx context.Context, tx pgx.Tx, batch []*Delivery) error {
	return f(ctx, tx, batch)
}

// BatchError reports which deliveries of a HandleBatch call failed, and
// why; the others succeeded. Errors may be postbox.Permanent.
type BatchError struct {
	Failed map[uuid.UUID]error
}

func (e *BatchError) Error() string {
	return fmt.Sprintf("inbox: %d deliveries of the batch failed", len(e.Failed))
}

// Fail records that the delivery with ID id failed with err, creating the
// map on first use: errs := &inbox.BatchError{}; errs.Fail(d.ID, err).
func (e *BatchError) Fail(id uuid.UUID, err error) {
	if e.Failed == nil {
		e.Failed = make(map[uuid.UUID]error)
	}
	e.Failed[id] = err
}

// Err returns e when it names a failed delivery and nil otherwise, so that
// a handler can end with return errs.Err().
func (e *BatchError) Err() error {
	if e == nil || len(e.Failed) == 0 {
		return nil
	}
	return e
}
