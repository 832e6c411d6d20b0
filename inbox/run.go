package inbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/internal/db"
)

// once claims one batch, handles it and commits it, and returns how many
// deliveries it claimed.
func (w *worker) once(ctx context.Context) (int, error) {
	c := w.c
	set, err := c.loadSettings(ctx)
	if err != nil {
		return 0, err
	}
	size := w.size()
	started := time.Now()
	conn, err := c.pool.Acquire(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return 0, nil
		}
		c.errs.Add(1)
		return 0, fmt.Errorf("inbox: acquire: %w", err)
	}
	defer conn.Release()
	claimStart := time.Now()
	rows, err := w.claim(ctx, conn, set, size)
	c.claims.Add(1)
	c.claimNanos.Add(int64(time.Since(claimStart)))
	if err != nil {
		// It may have taken partitions before it failed: they must not
		// stay locked by a connection that goes back to the pool.
		_ = conn.Conn().Close(context.WithoutCancel(ctx))
		if ctx.Err() != nil {
			return 0, nil
		}
		c.errs.Add(1)
		return 0, err
	}
	if len(rows) == 0 {
		c.emptyClaims.Add(1)
		return 0, nil
	}
	c.coord.workSeen.Store(true)
	if len(rows) >= size && c.coord.idle.Load() > 0 {
		c.coord.wakeOne() // a full batch: more is likely waiting
	}
	b := newBatch(c, set, rows, started, time.Since(started))
	if err := w.handle(ctx, conn, b); err != nil {
		c.errs.Add(1)
		return len(rows), err
	}
	return len(rows), nil
}

// handle runs one claimed batch in a transaction of its own on conn, which
// holds the claim's session locks on the batch's partitions until own
// turns them into the transaction's. The batch is not cut short by ctx: it
// commits or rolls back whole, and ctx only stops it from starting more
// handlers.
func (w *worker) handle(ctx context.Context, conn *pgxpool.Conn, b *batch) error {
	c := w.c
	bctx := context.WithoutCancel(ctx)
	released := false
	defer func() {
		if !released {
			// The session locks were not handed to a transaction: close
			// the connection rather than give it back holding them.
			_ = conn.Conn().Close(bctx)
		}
	}()
	pg := conn.Conn().PgConn()
	// lost stops what the server may still be running for this connection
	// once it is gone (pgx closes a connection whose query is cancelled,
	// and the backend would run on, holding the batch's locks).
	lost := func(err error) error {
		if !pg.IsClosed() && pg.IsBusy() {
			// Rows left open: the transaction cannot even roll back. Closing
			// the connection makes the server end it and let go its locks.
			cctx, cancel := context.WithTimeout(bctx, time.Second)
			_ = conn.Conn().Close(cctx)
			cancel()
		}
		if pg.IsClosed() {
			cctx, cancel := context.WithTimeout(bctx, 2*time.Second)
			_ = pg.CancelRequest(cctx)
			cancel()
		}
		return w.lost(b, err)
	}
	// The claim's reasoning is READ COMMITTED's, whatever the server's default.
	tx, err := conn.BeginTx(bctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return fmt.Errorf("inbox: begin: %w", err)
	}
	defer tx.Rollback(bctx)
	owned, err := own(bctx, tx, c.cfg.Subscriber, b.parts, true)
	if err != nil {
		return lost(&lostError{err: err})
	}
	released = true
	if dropped := b.keepOwned(owned); dropped > 0 {
		c.conflicts.Add(int64(dropped))
	}
	if len(owned) == 0 {
		return nil // every partition was taken meanwhile: claim again
	}
	c.busy.add(owned)
	defer c.busy.remove(owned)
	if w.dedup {
		// The last batch met a second copy of a handled message: look them
		// up before handling this one.
		handled, err := db.New(tx).ProcessedAmong(bctx, db.ProcessedAmongParams{Subscriber: c.cfg.Subscriber, MessageIds: b.ids()})
		if err != nil {
			return lost(&lostError{err: fmt.Errorf("inbox: dedup check: %w", err)})
		}
		b.markDuplicates(handled)
		w.dedup = false
	}
	if err := b.run(ctx, bctx, tx); err != nil {
		return lost(err)
	}
	err = db.New(tx).FinishBatch(bctx, b.finishParams())
	if isAborted(err) && c.cfg.Handler != nil {
		// The last handler returned nil over a transaction it left aborted:
		// run again carefully, which finds it.
		if _, rerr := tx.Exec(bctx, "ROLLBACK TO SAVEPOINT "+batchSavepoint); rerr != nil {
			return lost(&lostError{err: rerr})
		}
		b.reset()
		if err := b.careful(ctx, bctx, tx); err != nil {
			return lost(err)
		}
		err = db.New(tx).FinishBatch(bctx, b.finishParams())
	}
	if err != nil {
		if err := w.finishFailed(b, err); err != nil {
			return lost(err)
		}
		return nil
	}
	if err := tx.Commit(bctx); err != nil {
		return w.commitFailed(b, err, lost)
	}
	w.limit = min(2*w.limit, c.cfg.BatchSize)
	c.count(b)
	return nil
}

// finishFailed handles an error of finish_batch. A second copy of a
// handled message (unique_violation on processed) or a partition another
// batch finished first (PBC01) is nobody's failure: the batch is simply
// claimed again, looking up handled IDs first.
func (w *worker) finishFailed(b *batch, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "23505":
			w.dedup = true
			return nil
		case "PBC01":
			w.c.conflicts.Add(1)
			return nil
		}
	}
	return &lostError{err: fmt.Errorf("inbox: finish batch: %w", err), attempted: b.attempted()}
}

// commitFailed handles a refused COMMIT (a handler's effects violate a
// deferred constraint): some delivery of the batch is to blame, and
// claiming the same batch again would fail again. Alone in its batch, the
// delivery is charged the attempt; otherwise the next claims take one
// delivery at a time until it shows itself.
func (w *worker) commitFailed(b *batch, err error, lost func(error) error) error {
	err = fmt.Errorf("inbox: commit: %w", err)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Severity == "FATAL" {
		return lost(&lostError{err: err, attempted: b.attempted()}) // the session is gone
	}
	var attempted []*entry
	for _, e := range b.entries {
		if e.out == outHandled {
			attempted = append(attempted, e)
		}
	}
	if len(attempted) == 1 && first(b, attempted[0]) {
		e := attempted[0]
		e.out, e.fail = outFailed, b.classify(e, fmt.Errorf("commit refused: %w", pgErr))
		w.recordAlone(b, e)
		return err
	}
	// Several handled, or the one handled has an earlier delivery of its
	// partition in the batch that the refused commit did not record (a
	// park, a failure): its cursor cannot move past it alone.
	w.isolated = len(b.entries)
	return err
}

// lost handles a batch whose transaction is gone. The server ending the
// session (a timeout, an administrator) or the connection failing makes
// the worker's batches smaller. A delivery whose own doing it was (its
// handler's timeout closed the connection, or it left the connection
// busy) or that ran alone when the server timed the session out is
// charged the attempt in a transaction of its own, so it cannot stall
// every batch it lands in. Nobody else is charged anything: when the
// server ends a session of a larger batch, nobody can tell whose fault
// it was.
func (w *worker) lost(b *batch, err error) error {
	var lost *lostError
	if !errors.As(err, &lost) {
		return err
	}
	w.limit = max(1, w.limit/2)
	culprit := lost.culprit
	if culprit == nil && lost.attempted == 1 && sessionTimedOut(lost.err) {
		for _, e := range b.entries {
			if e.out == outHandled || e.out == outFailed {
				culprit = e
				e.out, e.fail = outFailed, b.classify(e, lost.err)
			}
		}
	}
	if culprit != nil {
		if first(b, culprit) {
			w.recordAlone(b, culprit)
		} else {
			// Its cursor cannot move past it alone: find it alone.
			w.isolated = len(b.entries)
		}
	}
	return lost.err
}

// sessionTimedOut reports whether the server ended the session for a
// timeout of its own: idle_in_transaction_session_timeout (25P03) or
// transaction_timeout (25P04). An administrator's termination (57P01) or
// a lost connection is nobody's fault.
func sessionTimedOut(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "25P03" || pgErr.Code == "25P04")
}

// first reports whether e can be recorded alone: a parked delivery always
// can; a stream one only if no stream delivery of its partition comes
// before it in the batch (its cursor then moves past it alone).
func first(b *batch, e *entry) bool {
	if !e.stream() {
		return true
	}
	for _, o := range b.entries {
		if o == e {
			return true
		}
		if o.stream() && o.row.Part == e.row.Part {
			return false
		}
	}
	return false
}

// recordAlone records culprit's failed attempt in a batch of its own, after
// the batch's transaction was lost. It is idempotent: a partition another
// consumer moved on meanwhile makes it a no-op, and an attempt already
// counted is not counted again.
func (w *worker) recordAlone(b *batch, culprit *entry) {
	c := w.c
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	alone := &batch{c: c, set: b.set, entries: []*entry{culprit}, started: time.Now(),
		parts: map[int16]cursorAt{culprit.row.Part: b.parts[culprit.row.Part]}}
	// The lost batch's backend may hold the partition a moment longer
	// (until the cancel sent for it lands): try again for a while.
	var err error
	for wait := 10 * time.Millisecond; ; wait *= 2 {
		owned := false
		err = pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
			parts, err := own(ctx, tx, c.cfg.Subscriber, alone.parts, false)
			if err != nil || len(parts) == 0 {
				return err
			}
			owned = true
			return db.New(tx).FinishBatch(ctx, alone.finishParams())
		})
		if err != nil || owned || wait > 2*time.Second {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
	if err != nil {
		c.cfg.Logger.Error("record failed attempt", "subscriber", c.cfg.Subscriber, "message_id", culprit.d.ID, "err", err)
		return
	}
	c.count(alone)
}
