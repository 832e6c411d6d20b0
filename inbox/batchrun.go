package inbox

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
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
	return b.bisect(ctx, bctx, tx, todo)
}

// partSavepoint wraps one BatchHandler call.
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
		if pg := tx.Conn().PgConn(); pg.IsClosed() || pg.IsBusy() {
			lost := &lostError{err: fmt.Errorf("inbox: the connection is unusable after a batch handler: %v", err),
				attempted: b.attempted() + len(todo)}
			if len(todo) == 1 && (timedOut || !pg.IsClosed()) {
				if err == nil {
					err = errors.New("batch handler returned nil but left the connection unusable")
				}
				lost.culprit = todo[0]
				todo[0].out, todo[0].fail = outFailed, b.classify(todo[0], err)
			}
			return lost
		} else if err == nil && pg.TxStatus() == 'E' {
			err = errors.New("batch handler returned nil but left the transaction aborted")
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
		var be *BatchError
		if errors.As(err, &be) && len(be.Failed) > 0 {
			named := 0
			rest := todo[:0:0]
			for _, e := range todo {
				if ferr, ok := be.Failed[e.d.ID]; ok && ferr != nil {
					b.failed(e, ferr)
					named++
					continue
				}
				rest = append(rest, e)
			}
			if named > 0 {
				todo = rest
				continue // the others again
			}
			// It named none of these: as a failure of the whole call.
		}
		if len(todo) == 1 {
			b.failed(todo[0], err)
			return nil
		}
		half := len(todo) / 2
		if err := b.bisect(ctx, bctx, tx, todo[:half]); err != nil {
			return err
		}
		todo = todo[half:]
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
	hctx, cancel := context.WithTimeout(postbox.WithCause(ctx, &ds[0].Message), c.cfg.HandlerTimeout)
	defer cancel()
	defer func() { timedOut = hctx.Err() != nil }()
	defer func() {
		if p := recover(); p != nil {
			c.cfg.Logger.Error("batch handler panicked", "subscriber", c.cfg.Subscriber, "deliveries", len(ds),
				"panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("batch handler panicked: %v", p)
		}
	}()
	return false, c.cfg.BatchHandler.HandleBatch(hctx, ownedTx{tx}, ds)
}
