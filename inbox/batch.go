package inbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/internal/db"
	"github.com/postbox-dev/postbox/internal/handlercall"
	"github.com/postbox-dev/postbox/internal/pgtext"
)

// How a batch runs its handlers. Optimistically first: one transaction, no
// savepoint per delivery, so a handler that writes one row costs that one
// statement. If a handler fails, the batch rolls back to the savepoint
// taken right after the claim (keeping its partitions) and runs again
// carefully, with a savepoint per delivery, so only the failed delivery's
// effects are lost. That is at most two passes, and the happy path pays no
// savepoint at all (docs/architecture.md has the measurements).

// outcome is what became of a delivery in a batch.
type outcome int

const (
	outNone      outcome = iota // not reached: stays for the next batch
	outHandled                  // handled: its effects commit with the mark
	outDuplicate                // already handled: dropped
	outFailed                   // failed: retried later, or dead (entry.fail.dead)
	outBlocked                  // a stream delivery whose key waits behind another
	outDelayed                  // a stream delivery not yet due
)

// entry is one claimed delivery and what became of it.
type entry struct {
	row  db.ClaimBatchRow
	d    *Delivery
	out  outcome
	fail failure
}

func (e *entry) stream() bool { return source(e.row.Source) == fromStream }

// failure is one failed attempt, to record.
type failure struct {
	attempts int
	err      string
	delay    time.Duration
	dead     bool
}

// batch is one claimed batch: its deliveries in handling order, the
// partitions it works and their cursors, and the keys that must wait for
// the rest of it.
type batch struct {
	c       *Consumer
	set     settings
	entries []*entry
	parts   map[int16]cursorAt
	held    map[string]int64 // per key, the seq after which its deliveries wait: one failed, was blocked or delayed
	// released are, per partition, the seq of a delivery its handler
	// handed back (ErrRelease): the batch goes no further in that partition.
	released map[int16]int64
	started  time.Time
	claimed  time.Duration
}

// holdKey makes the batch's later deliveries of e's key wait.
func (b *batch) holdKey(e *entry) {
	if e.d.Key == "" {
		return
	}
	if b.held == nil {
		b.held = make(map[string]int64)
	}
	if seq, ok := b.held[e.d.Key]; !ok || e.row.Seq < seq {
		b.held[e.d.Key] = e.row.Seq
	}
}

// waits reports whether e must wait behind an earlier delivery of its key.
func (b *batch) waits(e *entry) bool {
	if e.d.Key == "" {
		return false
	}
	seq, ok := b.held[e.d.Key]
	return ok && e.row.Seq > seq
}

// release hands e back, uncharged (its handler returned ErrRelease): it
// and the rest of its partition in this batch stay for the next claim, so
// the partition's cursor does not move past it.
func (b *batch) release(e *entry) {
	if b.released == nil {
		b.released = make(map[int16]int64)
	}
	if seq, ok := b.released[e.row.Part]; !ok || e.row.Seq < seq {
		b.released[e.row.Part] = e.row.Seq
	}
	e.out = outNone
}

// stopped reports whether e is at or after a delivery of its partition that
// was handed back: it stays for the next claim.
func (b *batch) stopped(e *entry) bool {
	seq, ok := b.released[e.row.Part]
	return ok && e.row.Seq >= seq
}

// expired reports whether the batch must start no more handlers.
func (b *batch) expired(ctx context.Context) bool {
	return ctx.Err() != nil || time.Since(b.started) >= b.c.budget()
}

// classify turns a handler error into the failure to record: dead when
// permanent or out of attempts, otherwise retried after a backoff.
func (b *batch) classify(e *entry, err error) failure {
	attempts := int(e.row.Attempts) + 1
	f := failure{attempts: attempts, err: pgtext.Clean(err.Error(), pgtext.MaxErrorBytes)}
	if postbox.IsPermanent(err) || attempts >= b.set.maxAttempts {
		f.dead = true
	} else {
		f.delay = b.set.delay(attempts)
	}
	return f
}

// failed records e's failure and holds its key.
func (b *batch) failed(e *entry, err error) {
	e.out, e.fail = outFailed, b.classify(e, err)
	b.holdKey(e)
	b.c.cfg.Logger.Warn("handler failed", "subscriber", b.c.cfg.Subscriber, "message_id", e.d.ID,
		"attempt", e.d.Attempt, "dead", e.fail.dead, "err", err)
}

// lostError is a batch whose transaction was lost (the connection closed,
// or the server ended the session). culprit, when set, is the delivery
// whose own doing that was; attempted counts the handlers the batch ran.
type lostError struct {
	err       error
	culprit   *entry
	attempted int
}

func (e *lostError) Error() string { return e.err.Error() }
func (e *lostError) Unwrap() error { return e.err }

// run runs the handlers of the deliveries that need one.
func (b *batch) run(ctx, bctx context.Context, tx pgx.Tx) error {
	if b.c.cfg.BatchHandler != nil {
		return b.runBatchHandler(ctx, bctx, tx)
	}
	if b.c.cfg.SavepointPerDelivery {
		return b.careful(ctx, bctx, tx)
	}
	ok, err := b.optimistic(ctx, bctx, tx)
	if ok || err != nil {
		return err
	}
	if _, err := tx.Exec(bctx, "ROLLBACK TO SAVEPOINT "+batchSavepoint); err != nil {
		return &lostError{err: fmt.Errorf("inbox: rollback to the batch savepoint: %w", err)}
	}
	return b.careful(ctx, bctx, tx)
}

// optimistic runs every handler in the transaction without savepoints. It
// reports false when one failed: the caller rolls back and runs carefully.
// The failure is kept, so that handler does not run again.
func (b *batch) optimistic(ctx, bctx context.Context, tx pgx.Tx) (bool, error) {
	for _, e := range b.entries {
		if e.out != outNone {
			continue
		}
		if b.expired(ctx) {
			break
		}
		if b.stopped(e) {
			continue
		}
		if b.waits(e) {
			b.block(e)
			continue
		}
		timedOut, err := b.c.call(bctx, tx, e.d)
		if lost := b.check(tx, e, timedOut, err); lost != nil {
			return false, lost
		}
		if e.out == outFailed || b.released != nil {
			b.reset()
			return false, nil
		}
	}
	return true, nil
}

// check looks at the connection after e's handler returned err (nil or
// not) and records what became of e. It returns the batch as lost when the
// connection is gone or unusable: the handler's own timeout closed it, it
// left rows open (the connection is busy), or the server went away. The
// handler is the culprit in the first two cases; in the last, nobody is.
// A handler that returned nil over a transaction it left aborted (a
// swallowed error) failed after all.
func (b *batch) check(tx pgx.Tx, e *entry, timedOut bool, err error) *lostError {
	unusable, err := handlercall.Call{Name: handlerName}.Check(tx, err)
	switch {
	case unusable:
		lost := &lostError{err: fmt.Errorf("inbox: the connection is unusable after the handler of %s: %v", e.d.ID, err),
			attempted: b.attempted() + 1}
		if timedOut || !tx.Conn().PgConn().IsClosed() {
			if err == nil {
				err = errors.New("handler returned nil but left the connection unusable")
			}
			lost.culprit = e
			e.out, e.fail = outFailed, b.classify(e, err)
		}
		return lost
	case errors.Is(err, ErrRelease):
		b.release(e)
	case err != nil:
		b.failed(e, err)
	default:
		e.out = outHandled
	}
	return nil
}

// reset forgets the optimistic pass's successes: its effects are rolled back.
func (b *batch) reset() {
	for _, e := range b.entries {
		if e.out == outHandled {
			e.out = outNone
		}
	}
}

// block makes a stream delivery wait behind its key (parked as blocked);
// a parked one simply stays parked.
func (b *batch) block(e *entry) {
	if e.stream() {
		e.out = outBlocked
	}
}

// attempted counts the handlers run so far.
func (b *batch) attempted() int {
	n := 0
	for _, e := range b.entries {
		if e.out == outHandled || e.out == outFailed {
			n++
		}
	}
	return n
}

// careful runs the handlers again, each in a savepoint of its own: a
// failure rolls back only its own effects.
func (b *batch) careful(ctx, bctx context.Context, tx pgx.Tx) error {
	sp := savepoint{tx: tx}
	for _, e := range b.entries {
		if e.out != outNone {
			continue
		}
		if b.expired(ctx) {
			break
		}
		if b.stopped(e) {
			continue
		}
		if b.waits(e) {
			b.block(e)
			continue
		}
		if err := sp.next(bctx); err != nil {
			return &lostError{err: fmt.Errorf("inbox: savepoint: %w", err), attempted: b.attempted()}
		}
		timedOut, herr := b.c.call(bctx, tx, e.d)
		if lost := b.check(tx, e, timedOut, herr); lost != nil {
			return lost
		}
		if e.out == outFailed || (e.out == outNone && b.stopped(e)) {
			if err := sp.rollback(bctx); err != nil {
				return &lostError{err: fmt.Errorf("inbox: rollback to savepoint after %s failed: %w", e.d.ID, err), attempted: b.attempted()}
			}
		}
	}
	if err := sp.release(bctx); err != nil {
		return &lostError{err: fmt.Errorf("inbox: release savepoint: %w", err), attempted: b.attempted()}
	}
	return nil
}

// call runs the handler with its timeout, the message as the cause of what
// it publishes, and panics turned into errors (logged with their stack).
// timedOut reports whether the handler's context had expired when it
// returned.
func (c *Consumer) call(ctx context.Context, tx pgx.Tx, d *Delivery) (timedOut bool, err error) {
	call := handlercall.Call{Name: handlerName, Timeout: c.cfg.HandlerTimeout, OnPanic: func(p any, stack []byte) {
		c.cfg.Logger.Error("handler panicked", "subscriber", d.Subscriber, "message_id", d.ID,
			"panic", p, "stack", string(stack))
	}}
	return call.Run(ctx, tx, &d.Message, func(ctx context.Context, tx pgx.Tx) error {
		return c.cfg.Handler.Handle(ctx, tx, d)
	})
}

// What the consumer calls, as its errors name them.
const (
	handlerName      = "handler"
	batchHandlerName = "batch handler"
)

// isAborted reports whether err is PostgreSQL's "current transaction is
// aborted" (25P02).
func isAborted(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "25P02"
}

// batchSavepoint is taken right after own: rolling back to it undoes the
// handlers' effects but keeps the partitions' locks.
const batchSavepoint = "postbox_batch"

// savepoint keeps one savepoint open around the current handler. Moving to
// the next handler releases the previous savepoint and opens a new one in
// one round trip.
type savepoint struct {
	tx   pgx.Tx
	open bool
}

func (s *savepoint) next(ctx context.Context) error {
	sql := "SAVEPOINT postbox_delivery"
	if s.open {
		sql = "RELEASE SAVEPOINT postbox_delivery; SAVEPOINT postbox_delivery"
	}
	if _, err := s.tx.Exec(ctx, sql); err != nil {
		return err
	}
	s.open = true
	return nil
}

// rollback undoes everything since the savepoint, which stays open.
func (s *savepoint) rollback(ctx context.Context) error {
	_, err := s.tx.Exec(ctx, "ROLLBACK TO SAVEPOINT postbox_delivery")
	return err
}

func (s *savepoint) release(ctx context.Context) error {
	if !s.open {
		return nil
	}
	if _, err := s.tx.Exec(ctx, "RELEASE SAVEPOINT postbox_delivery"); err != nil {
		return err
	}
	s.open = false
	return nil
}
