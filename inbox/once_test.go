package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/inbox"
)

// Ten concurrent calls with the same message ID run the handler once. The
// first caller's handler waits until the nine others are blocked on its
// uncommitted mark, so the calls really overlap.
func TestHandleOnceRunsConcurrentCallsOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := newBundle(t, "")
	const callers = 10
	id := postbox.NewID()
	var calls atomic.Int64
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		calls.Add(1)
		if _, err := tx.Exec(ctx, `INSERT INTO effects (message_id, note) VALUES ($1, 'webhook')`, d.ID); err != nil {
			return err
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			var waiting int
			if err := b.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
				WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting); err != nil {
				return err
			}
			if waiting == callers-1 {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("only %d callers blocked", waiting)
			}
			time.Sleep(5 * time.Millisecond) // polling interval
		}
	})
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		dups  atomic.Int64
		errs  = make(chan error, callers)
	)
	for range callers {
		wg.Go(func() {
			<-start
			msg := &postbox.Message{ID: id, Topic: "payments", Payload: []byte(`{}`)}
			dup, err := inbox.HandleOnce(ctx, b.pool, "webhooks", msg, h)
			if err != nil {
				errs <- err
			}
			if dup {
				dups.Add(1)
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := calls.Load(); got != 1 {
		t.Fatalf("handler ran %d times, want 1", got)
	}
	if got := dups.Load(); got != callers-1 {
		t.Fatalf("%d calls reported a duplicate, want %d", got, callers-1)
	}
	if got := b.effects(t); got != 1 {
		t.Fatalf("effects = %d, want 1", got)
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.processed WHERE subscriber = 'webhooks' AND message_id = $1`, id); got != 1 {
		t.Fatalf("marks = %d, want 1", got)
	}
}

// A failed call leaves neither mark nor effects, so a later call runs the
// handler; the call after that is a duplicate.
func TestHandleOnceFailureLeavesNoMark(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := newBundle(t, "")
	msg := &postbox.Message{ID: postbox.NewID(), Topic: "payments", Payload: []byte(`{}`)}
	var calls atomic.Int64
	write := func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		calls.Add(1)
		_, err := tx.Exec(ctx, `INSERT INTO effects (message_id, note) VALUES ($1, 'charged')`, d.ID)
		return err
	}
	errDown := errors.New("payment provider down")
	failing := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		if err := write(ctx, tx, d); err != nil {
			return err
		}
		return errDown
	})
	swallowing := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		if err := write(ctx, tx, d); err != nil {
			return err
		}
		_, _ = tx.Exec(ctx, `SELECT 1/0`) // error swallowed: the transaction is aborted
		return nil
	})
	ok := inbox.HandlerFunc(write)

	if dup, err := inbox.HandleOnce(ctx, b.pool, "payments", msg, failing); !errors.Is(err, errDown) || dup {
		t.Fatalf("failing handler: duplicate %v, err %v; want the handler's error", dup, err)
	}
	if dup, err := inbox.HandleOnce(ctx, b.pool, "payments", msg, swallowing); err == nil || dup {
		t.Fatalf("handler that left the transaction aborted: duplicate %v, err %v; want an error", dup, err)
	}
	if got := b.count(t, `SELECT (SELECT count(*) FROM effects) + (SELECT count(*) FROM postbox.processed)`); got != 0 {
		t.Fatalf("failed calls left %d rows", got)
	}
	if dup, err := inbox.HandleOnce(ctx, b.pool, "payments", msg, ok); err != nil || dup {
		t.Fatalf("retry: duplicate %v, err %v; want the handler to run", dup, err)
	}
	if dup, err := inbox.HandleOnce(ctx, b.pool, "payments", msg, ok); err != nil || !dup {
		t.Fatalf("repeat: duplicate %v, err %v; want a duplicate", dup, err)
	}
	if got := calls.Load(); got != 3 {
		t.Fatalf("handler calls = %d, want 3 (the last call is a duplicate)", got)
	}
	if got := b.effects(t); got != 1 {
		t.Fatalf("effects = %d, want 1", got)
	}
	// Another subscriber handles the same message on its own.
	if dup, err := inbox.HandleOnce(ctx, b.pool, "ledger", msg, ok); err != nil || dup {
		t.Fatalf("other subscriber: duplicate %v, err %v; want the handler to run", dup, err)
	}
}

// Inside the caller's transaction, the mark lives and dies with it.
func TestHandleOnceInCallersTransaction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := newBundle(t, "")
	msg := &postbox.Message{ID: postbox.NewID(), Topic: "payments"}
	ok := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		_, err := tx.Exec(ctx, `INSERT INTO effects (message_id, note) VALUES ($1, 'charged')`, d.ID)
		return err
	})
	for _, commit := range []bool{false, true} {
		tx, err := b.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if dup, err := inbox.HandleOnce(ctx, tx, "payments", msg, ok); err != nil || dup {
			t.Fatalf("commit %v: duplicate %v, err %v", commit, dup, err)
		}
		if commit {
			err = tx.Commit(ctx)
		} else {
			err = tx.Rollback(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if got := b.effects(t); got != 1 {
		t.Fatalf("effects = %d, want 1 (the rolled back call's effect is gone)", got)
	}
	if dup, err := inbox.HandleOnce(ctx, b.pool, "payments", msg, ok); err != nil || !dup {
		t.Fatalf("after commit: duplicate %v, err %v; want a duplicate", dup, err)
	}
}

// Bad input is refused before anything is written, and the handler cannot
// commit the transaction itself.
func TestHandleOnceRefusesBadInput(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := newBundle(t, "")
	var commitErr error
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		commitErr = tx.Commit(ctx)
		return nil
	})
	if _, err := inbox.HandleOnce(ctx, b.pool, "payments", &postbox.Message{Topic: "x"}, h); !errors.Is(err, postbox.ErrInvalid) {
		t.Fatalf("message without ID: err %v, want ErrInvalid", err)
	}
	if _, err := inbox.HandleOnce(ctx, b.pool, "Bad Name", &postbox.Message{ID: postbox.NewID()}, h); !errors.Is(err, postbox.ErrInvalid) {
		t.Fatalf("bad subscriber name: err %v, want ErrInvalid", err)
	}
	if _, err := inbox.HandleOnce(ctx, b.pool, "payments", &postbox.Message{ID: postbox.NewID()}, h); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(commitErr, inbox.ErrTxOwned) {
		t.Fatalf("handler's Commit = %v, want ErrTxOwned", commitErr)
	}
}
