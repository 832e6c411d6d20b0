// Package handlercall is how a handler is called, for the consumer (inbox)
// and for postboxtest.Handle, which runs a handler exactly as a consumer
// does: the handler's timeout, the message as the cause of what it
// publishes, the transaction it may not commit, a panic turned into an
// error, and what the connection tells after it returned.
package handlercall

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
)

// ErrTxOwned is returned when a handler tries to commit or roll back the
// transaction it was given (inbox.ErrTxOwned is this error).
var ErrTxOwned = errors.New("inbox: the consumer owns this transaction; return nil to commit or an error to roll back")

// Owned is tx as a handler sees it: everything but Commit and Rollback,
// which return ErrTxOwned. Begin still works and opens a nested savepoint.
func Owned(tx pgx.Tx) pgx.Tx { return ownedTx{tx} }

type ownedTx struct{ pgx.Tx }

func (ownedTx) Commit(context.Context) error   { return ErrTxOwned }
func (ownedTx) Rollback(context.Context) error { return ErrTxOwned }

// Call is one way of calling a handler.
type Call struct {
	// Name is what is called ("handler", "batch handler"): the start of
	// the errors Run and Check make.
	Name string
	// Timeout bounds the handler through its context.
	Timeout time.Duration
	// OnPanic, when set, sees a panic's value and stack before it becomes
	// Run's error.
	OnPanic func(p any, stack []byte)
}

// Run calls fn with ctx bounded by c.Timeout and carrying cause as the
// cause of what it publishes (postbox.WithCause), and tx as Owned. A panic
// becomes the error "<Name> panicked: <value>". timedOut reports whether
// the handler's context had expired when it returned.
func (c Call) Run(ctx context.Context, tx pgx.Tx, cause *postbox.Message, fn func(context.Context, pgx.Tx) error) (timedOut bool, err error) {
	hctx, cancel := context.WithTimeout(postbox.WithCause(ctx, cause), c.Timeout)
	defer cancel()
	defer func() { timedOut = hctx.Err() != nil }()
	defer func() {
		if p := recover(); p != nil {
			if c.OnPanic != nil {
				c.OnPanic(p, debug.Stack())
			}
			err = fmt.Errorf("%s panicked: %v", c.Name, p)
		}
	}()
	return false, fn(hctx, Owned(tx))
}

// Check looks at tx's connection after the handler returned err (nil or
// not). unusable reports a connection closed or busy (the handler left
// rows open): its transaction is lost. Otherwise Check returns err, or,
// when the handler returned nil over a transaction it left aborted (a
// swallowed error), the error that it failed after all.
func (c Call) Check(tx pgx.Tx, err error) (unusable bool, _ error) {
	pg := tx.Conn().PgConn()
	switch {
	case pg.IsClosed() || pg.IsBusy():
		return true, err
	case err == nil && pg.TxStatus() == 'E':
		return false, fmt.Errorf("%s returned nil but left the transaction aborted", c.Name)
	}
	return false, err
}
