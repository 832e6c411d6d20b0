package postboxtest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/db"
	"github.com/postbox-dev/postbox/internal/handlercall"
)

// HandleOpts adjust Handle. The zero value (or nil) runs the handler as a
// consumer with the default settings runs it on a first attempt.
type HandleOpts struct {
	// Subscriber the delivery is for. Default "postboxtest". When it is
	// declared in tx's database, its MaxAttempts and Partitions apply.
	Subscriber string
	// Attempt of the delivery, from 1 (the default).
	Attempt int
	// Timeout bounds the handler through its context, as
	// inbox.Config.HandlerTimeout does. Default inbox.DefaultHandlerTimeout.
	Timeout time.Duration
}

// HandleResult is what came of a Handle.
type HandleResult struct {
	// Err is nil when the delivery was handled: its effects are kept in the
	// test's transaction. Otherwise it is why not — the handler's error, a
	// panic ("handler panicked: ..."), a transaction the handler left
	// aborted — and its effects were rolled back.
	Err error
	// Dead reports that a consumer would make the delivery a dead letter
	// now, rather than retry it: Err is postbox.Permanent, or this was the
	// subscriber's last attempt.
	Dead bool
	// Released reports that the handler handed the delivery back
	// (inbox.ErrRelease): a consumer charges no attempt and claims it
	// again later. Its effects were rolled back.
	Released bool
	// Published are the messages the handler wrote to the outbox, in order,
	// if it succeeded. They carry the delivery's correlation-id and name it
	// as their causation-id, as under a consumer.
	Published []*Published
}

// DefaultSubscriber is the subscriber Handle delivers to when
// HandleOpts.Subscriber is empty.
const DefaultSubscriber = "postboxtest"

// Handle runs h on msg synchronously, as a consumer runs a handler, inside
// a savepoint of tx: with the consumer's timeout, the message as the cause
// of what h publishes, Commit and Rollback refused (inbox.ErrTxOwned), a
// panic turned into an error, and a failure rolling back h's effects (to
// the savepoint) while the test's transaction goes on. On success h's
// effects stay in tx for the test to look at. An empty msg.ID is filled.
//
// Problems of the test itself (tx unusable, h leaving the connection with
// rows open) fail tb; what h did is in the result.
func Handle(ctx context.Context, tb testing.TB, tx pgx.Tx, h inbox.Handler, msg *postbox.Message, opts *HandleOpts) HandleResult {
	tb.Helper()
	if opts == nil {
		opts = &HandleOpts{}
	}
	if msg == nil {
		tb.Fatal("postboxtest: Handle: nil message")
	}
	o := *opts
	if o.Subscriber == "" {
		o.Subscriber = DefaultSubscriber
	}
	if o.Attempt == 0 {
		o.Attempt = 1
	}
	if o.Timeout == 0 {
		o.Timeout = inbox.DefaultHandlerTimeout
	}
	set := subscriberSettings(ctx, tb, tx, o.Subscriber)
	d := &inbox.Delivery{Message: *msg, Subscriber: o.Subscriber, Attempt: o.Attempt}
	if d.ID == [16]byte{} {
		d.ID = postbox.NewID()
		msg.ID = d.ID
	}
	if d.CreatedAt.IsZero() {
		d.CreatedAt = time.Now()
	}
	d.Partition = int(dispatcher.KeyHash(d.Key, d.ID)) % set.Partitions

	before, err := db.New(tx).OutboxLastID(ctx)
	if err != nil {
		tb.Fatalf("postboxtest: Handle: %v", err)
	}
	sp, err := tx.Begin(ctx)
	if err != nil {
		tb.Fatalf("postboxtest: Handle: savepoint: %v", err)
	}
	// The consumer's handler call and its look at the connection after.
	call := handlercall.Call{Name: "handler", Timeout: o.Timeout}
	_, err = call.Run(ctx, sp, &d.Message, func(ctx context.Context, tx pgx.Tx) error { return h.Handle(ctx, tx, d) })
	unusable, err := call.Check(sp, err)
	if unusable {
		tb.Fatalf("postboxtest: Handle: the connection is unusable after the handler (did it leave rows open?); a consumer would charge it an attempt and lose its batch: %v", err)
	}
	res := HandleResult{Err: err}
	if err != nil {
		if rerr := sp.Rollback(ctx); rerr != nil {
			tb.Fatalf("postboxtest: Handle: roll back to the savepoint: %v", rerr)
		}
		res.Released = errors.Is(err, inbox.ErrRelease)
		res.Dead = !res.Released && (postbox.IsPermanent(err) || o.Attempt >= set.MaxAttempts)
		return res
	}
	if err := sp.Commit(ctx); err != nil {
		tb.Fatalf("postboxtest: Handle: release the savepoint: %v", err)
	}
	if res.Published, err = readOutbox(ctx, tx, before); err != nil {
		tb.Fatalf("postboxtest: Handle: read the outbox: %v", err)
	}
	return res
}

// subscriberSettings are the declared subscriber's options, or the
// defaults.
func subscriberSettings(ctx context.Context, tb testing.TB, tx pgx.Tx, name string) dispatcher.Options {
	tb.Helper()
	s, err := dispatcher.GetSubscriber(ctx, tx, name)
	switch {
	case errors.Is(err, dispatcher.ErrNotFound):
		return dispatcher.Options{Partitions: dispatcher.DefaultPartitions, MaxAttempts: dispatcher.DefaultMaxAttempts}
	case err != nil:
		tb.Fatalf("postboxtest: Handle: subscriber %s: %v", name, err)
	}
	return s.Options
}
