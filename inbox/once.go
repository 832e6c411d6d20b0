package inbox

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/internal/db"
	"github.com/postbox-dev/postbox/internal/handlercall"
	"github.com/postbox-dev/postbox/internal/invalid"
)

// TxBeginner starts transactions: *pgxpool.Pool, *pgx.Conn, and pgx.Tx
// (which starts a savepoint) all do.
type TxBeginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// HandleOnce handles a message that arrived from outside postbox (another
// broker, a webhook) at most once per (subscriber, msg.ID). It marks the ID
// handled and runs h in one transaction: if h fails, neither the mark nor
// h's effects are kept; if the ID was already handled within the dedup
// window, h does not run and duplicate is true. Two concurrent calls with
// the same ID cannot both run h: the second waits for the first's commit on
// the unique key and then sees the mark — there is no gap between "check"
// and "mark".
//
// subscriber need not be declared; an undeclared one gets the default dedup
// window of 7 days.
func HandleOnce(ctx context.Context, beginner TxBeginner, subscriber string, msg *postbox.Message, h Handler) (duplicate bool, err error) {
	if err := postbox.ValidateName("subscriber", subscriber); err != nil {
		return false, err
	}
	switch {
	case msg == nil:
		return false, invalid.Nil("msg")
	case msg.ID == uuid.Nil:
		return false, invalid.Errorf("Message.ID", "zero: an outside message needs its sender's ID for deduplication")
	case h == nil:
		return false, invalid.Nil("h")
	}
	tx, err := beginner.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("inbox: handle once: begin: %w", err)
	}
	defer tx.Rollback(ctx)
	n, err := db.New(tx).MarkProcessed(ctx, db.MarkProcessedParams{Subscriber: subscriber, MessageID: msg.ID})
	if err != nil {
		return false, fmt.Errorf("inbox: handle once %s: mark: %w", msg.ID, err)
	}
	if n == 0 {
		return true, nil
	}
	d := &Delivery{Message: *msg, Subscriber: subscriber, Attempt: 1}
	if err := h.Handle(postbox.WithCause(ctx, &d.Message), handlercall.Owned(tx), d); err != nil {
		return false, err
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("inbox: handle once %s: commit: %w", msg.ID, err)
	}
	return false, nil
}
