package inbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox/internal/handlercall"
)

// runBatchHandler hands the batch's deliveries to the BatchHandler, each
// call in a savepoint of its own. A *BatchError fails the deliveries it
// names: their effects roll back with the call, and the others are handed
// over again. Any other error fails the call as a whole, and the
// deliveries are handed over in halves until those that fail alone are
// found; only they are charged an attempt.
func (b *batch) runBatchHandler(ctx, bctx context.Context, tx pgx.Tx) error {
	var todo []*entry
	for _, e := range b.entries {
		if e.out != outNone {
			continue
		}
		if b.waits(e) {
			b.block(e)
			continue
		}
		todo = append(todo, e)
	}
	if len(todo) == 0 || b.expired(ctx) {
		return nil
	}
	// Optimistically first: the whole batch in one call, no savepoint of
	// its own (the batch savepoint is there to roll back to).
	timedOut, err := b.c.callBatch(bctx, tx, todo)
	if lost := b.checkBatch(tx, todo, timedOut, &err); lost != nil {
		return lost
	}
	if err == nil {
		for _, e := range todo {
			e.out = outHandled
		}
		return nil
	}
	if _, rerr := tx.Exec(bctx, "ROLLBACK TO SAVEPOINT "+batchSavepoint); rerr != nil {
		return &lostError{err: fmt.Errorf("inbox: rollback to the batch savepoint after a batch handler failed (%v): %w", err, rerr),
			attempted: b.attempted() + len(todo)}
	}
	if rest := b.named(todo, err); len(rest) < len(todo) {
		return b.bisect(ctx, bctx, tx, rest) // the others again
	}
	return b.split(ctx, bctx, tx, todo, err)
}

// split handles a batch that failed as a whole: alone, the delivery is
// charged the failure; otherwise each half is handed over on its own.
func (b *batch) split(ctx, bctx context.Context, tx pgx.Tx, todo []*entry, err error) error {
	if len(todo) == 1 {
		b.failed(todo[0], err)
		return nil
	}
	half := len(todo) / 2
	if err := b.bisect(ctx, bctx, tx, todo[:half]); err != nil {
		return err
	}
	return b.bisect(ctx, bctx, tx, todo[half:])
}

// checkBatch looks at the connection after a BatchHandler call, as check
// does after a Handler's: a connection gone or busy loses the batch (the
// handler is the culprit only when it had a single delivery), and nil over
// an aborted transaction becomes a failure of the call.
func (b *batch) checkBatch(tx pgx.Tx, todo []*entry, timedOut bool, err *error) *lostError {
	unusable, cerr := handlercall.Call{Name: batchHandlerName}.Check(tx, *err)
	if unusable {
		lost := &lostError{err: fmt.Errorf("inbox: the connection is unusable after a batch handler: %v", *err),
			attempted: b.attempted() + len(todo)}
		if len(todo) == 1 && (timedOut || !tx.Conn().PgConn().IsClosed()) {
			cause := *err
			if cause == nil {
				cause = errors.New("batch handler returned nil but left the connection unusable")
			}
			lost.culprit = todo[0]
			todo[0].out, todo[0].fail = outFailed, b.classify(todo[0], cause)
		}
		return lost
	}
	*err = cerr
	return nil
}

// named records the failures a *BatchError names among todo and returns
// the others (all of todo when err names none of them).
func (b *batch) named(todo []*entry, err error) []*entry {
	var be *BatchError
	if !errors.As(err, &be) || len(be.Failed) == 0 {
		return todo
	}
	rest := todo[:0:0]
	for _, e := range todo {
		if ferr, ok := be.Failed[e.d.ID]; ok && ferr != nil {
			b.failed(e, ferr)
			continue
		}
		rest = append(rest, e)
	}
	return rest
}

// partSavepoint wraps one BatchHandler call after the first failed.
const partSavepoint = "postbox_part"

func (b *batch) bisect(ctx, bctx context.Context, tx pgx.Tx, todo []*entry) error {
	for len(todo) > 0 {
		// Later deliveries of a key that failed meanwhile wait.
		kept := todo[:0:0]
		for _, e := range todo {
			if b.waits(e) {
				b.block(e)
				continue
			}
			kept = append(kept, e)
		}
		todo = kept
		if len(todo) == 0 || b.expired(ctx) {
			return nil
		}
		if _, err := tx.Exec(bctx, "SAVEPOINT "+partSavepoint); err != nil {
			return &lostError{err: fmt.Errorf("inbox: savepoint: %w", err), attempted: b.attempted()}
		}
		timedOut, err := b.c.callBatch(bctx, tx, todo)
		if lost := b.checkBatch(tx, todo, timedOut, &err); lost != nil {
			return lost
		}
		if err == nil {
			if _, err := tx.Exec(bctx, "RELEASE SAVEPOINT "+partSavepoint); err != nil {
				return &lostError{err: fmt.Errorf("inbox: release savepoint: %w", err), attempted: b.attempted() + len(todo)}
			}
			for _, e := range todo {
				e.out = outHandled
			}
			return nil
		}
		if _, rerr := tx.Exec(bctx, "ROLLBACK TO SAVEPOINT "+partSavepoint); rerr != nil {
			return &lostError{err: fmt.Errorf("inbox: rollback to savepoint after a batch handler failed (%v): %w", err, rerr),
				attempted: b.attempted() + len(todo)}
		}
		if rest := b.named(todo, err); len(rest) < len(todo) {
			todo = rest
			continue // the others again
		}
		return b.split(ctx, bctx, tx, todo, err)
	}
	return nil
}

// callBatch runs the BatchHandler with the handler timeout, the first
// delivery as the cause of what it publishes, and panics turned into
// errors.
func (c *Consumer) callBatch(ctx context.Context, tx pgx.Tx, todo []*entry) (timedOut bool, err error) {
	ds := make([]*Delivery, len(todo))
	for i, e := range todo {
		ds[i] = e.d
	}
	call := handlercall.Call{Name: batchHandlerName, Timeout: c.cfg.HandlerTimeout, OnPanic: func(p any, stack []byte) {
		c.cfg.Logger.Error("batch handler panicked", "subscriber", c.cfg.Subscriber, "deliveries", len(ds),
			"panic", p, "stack", string(stack))
	}}
	return call.Run(ctx, tx, &ds[0].Message, func(ctx context.Context, tx pgx.Tx) error {
		return c.cfg.BatchHandler.HandleBatch(ctx, tx, ds)
	})
}
