package watermill

import (
	"context"
	"errors"
	"sync"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/inbox"
)

type txKey struct{}
type deliveryKey struct{}

// WithTx returns a context that carries tx. A Publisher writes a message
// whose context carries a transaction through that transaction, so the
// message exists if and only if it commits:
//
//	msg.SetContext(watermill.WithTx(ctx, tx))
//	err := pub.Publish("orders.created", msg)
//	... tx.Commit(ctx)
func WithTx(ctx context.Context, tx pgx.Tx) context.Context {
	return context.WithValue(ctx, txKey{}, tx)
}

// TxFromContext returns the transaction in ctx, if any. The context of a
// message from a Subscriber carries its delivery's transaction: what a
// handler writes through it commits together with the message's Ack, and is
// rolled back by its Nack.
func TxFromContext(ctx context.Context) (pgx.Tx, bool) {
	tx, ok := ctx.Value(txKey{}).(pgx.Tx)
	return tx, ok && tx != nil
}

// DeliveryFromContext returns the postbox delivery behind a message from a
// Subscriber: its postbox ID, topic, attempt, partition and the subscriber
// name.
func DeliveryFromContext(ctx context.Context) (*inbox.Delivery, bool) {
	d, ok := ctx.Value(deliveryKey{}).(*inbox.Delivery)
	return d, ok
}

// PropagateTx is router middleware: the messages a handler returns, when
// their own context carries no transaction, get the incoming message's
// transaction (and its identity as their cause, for postbox's
// correlation-id and causation-id headers). A Publisher then writes them
// in the transaction that commits with the incoming message's Ack: a
// consume-transform-publish step that happens exactly once.
func PropagateTx(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		out, err := h(msg)
		if err != nil {
			return out, err
		}
		tx, ok := TxFromContext(msg.Context())
		if !ok {
			return out, nil
		}
		cause := postbox.CauseFrom(msg.Context())
		for _, m := range out {
			if _, has := TxFromContext(m.Context()); has {
				continue
			}
			ctx := WithTx(m.Context(), tx)
			if cause != nil && postbox.CauseFrom(ctx) == nil {
				ctx = postbox.WithCause(ctx, cause)
			}
			m.SetContext(ctx)
		}
		return out, nil
	}
}

// ErrTxDone is returned by the transaction in a message's context once the
// message has been acked or nacked: the consumer has moved on to the next
// delivery, and a statement now would land in that delivery's savepoint.
var ErrTxDone = errors.New("watermill: the message's transaction ended with its Ack or Nack")

// txGuard lets the transaction of a message be used until the message is
// acked or nacked, and no longer. finish waits for statements in flight.
type txGuard struct {
	mu   sync.RWMutex
	done bool
}

func (g *txGuard) enter() error {
	g.mu.RLock()
	if g.done {
		g.mu.RUnlock()
		return ErrTxDone
	}
	return nil
}

func (g *txGuard) leave() { g.mu.RUnlock() }

func (g *txGuard) finish() {
	g.mu.Lock()
	g.done = true
	g.mu.Unlock()
}

// guardedTx is a delivery's transaction as a Watermill handler sees it.
// Commit and Rollback of the outer transaction are refused by the consumer
// (inbox.ErrTxOwned); those of a nested one (Begin) release or roll back
// its savepoint.
type guardedTx struct {
	tx pgx.Tx
	g  *txGuard
}

var _ pgx.Tx = guardedTx{}

func (t guardedTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if err := t.g.enter(); err != nil {
		return nil, err
	}
	defer t.g.leave()
	nested, err := t.tx.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return guardedTx{tx: nested, g: t.g}, nil
}

func (t guardedTx) Commit(ctx context.Context) error {
	if err := t.g.enter(); err != nil {
		return err
	}
	defer t.g.leave()
	return t.tx.Commit(ctx)
}

func (t guardedTx) Rollback(ctx context.Context) error {
	if err := t.g.enter(); err != nil {
		return err
	}
	defer t.g.leave()
	return t.tx.Rollback(ctx)
}

func (t guardedTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if err := t.g.enter(); err != nil {
		return 0, err
	}
	defer t.g.leave()
	return t.tx.CopyFrom(ctx, table, columns, src)
}

func (t guardedTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if err := t.g.enter(); err != nil {
		return errBatchResults{err}
	}
	defer t.g.leave()
	return t.tx.SendBatch(ctx, b)
}

func (t guardedTx) LargeObjects() pgx.LargeObjects { return t.tx.LargeObjects() }

func (t guardedTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	if err := t.g.enter(); err != nil {
		return nil, err
	}
	defer t.g.leave()
	return t.tx.Prepare(ctx, name, sql)
}

func (t guardedTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if err := t.g.enter(); err != nil {
		return pgconn.CommandTag{}, err
	}
	defer t.g.leave()
	return t.tx.Exec(ctx, sql, args...)
}

func (t guardedTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if err := t.g.enter(); err != nil {
		return nil, err
	}
	defer t.g.leave()
	return t.tx.Query(ctx, sql, args...)
}

func (t guardedTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	if err := t.g.enter(); err != nil {
		return errRow{err}
	}
	defer t.g.leave()
	return t.tx.QueryRow(ctx, sql, args...)
}

func (t guardedTx) Conn() *pgx.Conn { return t.tx.Conn() }

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

type errBatchResults struct{ err error }

func (r errBatchResults) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, r.err }
func (r errBatchResults) Query() (pgx.Rows, error)         { return nil, r.err }
func (r errBatchResults) QueryRow() pgx.Row                { return errRow(r) }
func (r errBatchResults) Close() error                     { return r.err }
func (r errBatchResults) Tx() pgx.Tx                       { return nil }
