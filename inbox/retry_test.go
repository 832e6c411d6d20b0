package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
)

// The consumer schedules each retry as the backoff schedule says (its
// wait within the jitter band around its interval: TestDelaySchedule
// tests the schedule itself), no attempt starts before its wait is over,
// and after MaxAttempts the message is a dead letter carrying the three
// headers.
func TestRetryWaitGrowsThenDeadLetter(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const maxAttempts = 6
	backoff := dispatcher.Backoff{Initial: 10 * time.Millisecond, Max: time.Second, Multiplier: 2}
	b := setup(t, 1, 1, dispatcher.Options{MaxAttempts: maxAttempts, Backoff: backoff})
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		// The previous failure's scheduled wait, as the consumer wrote it.
		var wait *float64
		if err := tx.QueryRow(ctx, `SELECT (SELECT extract(epoch FROM available_at - last_error_at) * 1000
			FROM postbox.parked WHERE subscriber = $1 AND message_id = $2)`, d.Subscriber, d.ID).Scan(&wait); err != nil {
			return err
		}
		note := ""
		if wait != nil {
			note = fmt.Sprint(*wait)
		}
		if err := b.logCall(ctx, d, note); err != nil {
			return err
		}
		return fmt.Errorf("attempt %d failed", d.Attempt)
	})
	c := b.consumer(t, inbox.Config{Handler: h, Concurrency: 1,
		PollInterval: 2 * time.Millisecond, MaxPollInterval: 2 * time.Millisecond, NoListen: true})
	stop, _ := run(t, c)
	waitFor(t, "dead letter", func() (bool, error) {
		n, err := count(ctx, b.pool, `SELECT count(*) FROM postbox.dead_letters`)
		return n == 1, err
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	rows, err := b.pool.Query(ctx, `SELECT attempt, extract(epoch FROM at - lag(at) OVER (ORDER BY id)) * 1000, note FROM calls ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	type call struct {
		Attempt int
		Gap     *float64 // ms since the previous attempt started
		Note    string
	}
	calls, err := pgx.CollectRows(rows, pgx.RowToStructByPos[call])
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) != maxAttempts {
		t.Fatalf("%d attempts, want %d", len(calls), maxAttempts)
	}
	// interval is the wait scheduled after failed attempt k, before jitter.
	interval := func(k int) float64 {
		ms := float64(backoff.Initial.Milliseconds())
		for range k - 1 {
			ms *= backoff.Multiplier
		}
		return min(ms, float64(backoff.Max.Milliseconds()))
	}
	for i, c := range calls {
		if c.Attempt != i+1 {
			t.Fatalf("call %d was attempt %d", i+1, c.Attempt)
		}
		if i == 0 {
			continue
		}
		var wait float64
		if _, err := fmt.Sscan(c.Note, &wait); err != nil {
			t.Fatalf("attempt %d: no scheduled wait recorded (%q)", c.Attempt, c.Note)
		}
		// Jitter 0.5; 1ms of slack for the millisecond rounding.
		lo, hi := 0.5*interval(i)-1, 1.5*interval(i)+1
		if wait < lo || wait > hi {
			t.Errorf("wait after attempt %d = %.1fms, want within [%.1f, %.1f]", i, wait, lo, hi)
		}
		if *c.Gap < wait {
			t.Errorf("attempt %d started %.1fms after attempt %d, before its scheduled wait of %.1fms", c.Attempt, *c.Gap, i, wait)
		}
	}
	var (
		attempts  int
		headers   map[string]string
		lastError string
		deadAt    time.Time
	)
	if err := b.pool.QueryRow(ctx, `SELECT attempts, headers, last_error, dead_at FROM postbox.dead_letters`).
		Scan(&attempts, &headers, &lastError, &deadAt); err != nil {
		t.Fatal(err)
	}
	if attempts != maxAttempts || lastError != "attempt 6 failed" {
		t.Fatalf("dead letter: attempts %d, last_error %q", attempts, lastError)
	}
	if headers[postbox.HeaderRetryCount] != "6" || headers[postbox.HeaderOriginalError] != "attempt 6 failed" {
		t.Fatalf("dead letter headers = %v", headers)
	}
	moved, err := time.Parse(time.RFC3339Nano, headers[postbox.HeaderMovedToDLQAt])
	if err != nil {
		t.Fatalf("%s: %v", postbox.HeaderMovedToDLQAt, err)
	}
	if d := moved.Sub(deadAt).Abs(); d > time.Millisecond {
		t.Fatalf("%s = %s, dead_at = %s", postbox.HeaderMovedToDLQAt, moved, deadAt)
	}
	if s := c.Stats(); s.Failed != maxAttempts-1 || s.Dead != 1 || s.Handled != 0 {
		t.Fatalf("stats = %+v, want %d failed and 1 dead", s, maxAttempts-1)
	}
}

// The wait before a retry counts from the failure, not from the start of
// the batch the failure happened in: a message that fails after a slow
// handler in the same batch still waits its backoff.
func TestRetryWaitCountsFromTheFailure(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	// Waits of 200 to 600ms; the slow handler before takes 800ms.
	backoff := dispatcher.Backoff{Initial: 400 * time.Millisecond, Max: 400 * time.Millisecond, Multiplier: 2}
	b := setup(t, 2, 2, dispatcher.Options{MaxAttempts: 2, Backoff: backoff})
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		v, err := postbox.Decode[struct{ N int }](d.Payload)
		if err != nil {
			return err
		}
		if v.N == 0 {
			_, err := tx.Exec(ctx, `SELECT pg_sleep(0.8)`) // a slow handler
			return err
		}
		if err := b.logCall(ctx, d, ""); err != nil {
			return err
		}
		if d.Attempt == 1 {
			return errors.New("try again")
		}
		return nil
	})
	c := b.consumer(t, inbox.Config{Handler: h, Concurrency: 1, PollInterval: 2 * time.Millisecond, NoListen: true})
	waitFor(t, "every message handled", func() (bool, error) {
		if _, err := c.RunOnce(ctx); err != nil {
			return false, err
		}
		return pgtest.Depths(t, ctx, b.pool, "work").Pending() == 0, nil
	})
	var gap float64
	if err := b.pool.QueryRow(ctx, `SELECT extract(epoch FROM max(at) - min(at)) * 1000 FROM calls WHERE n = 1`).Scan(&gap); err != nil {
		t.Fatal(err)
	}
	if got := b.count(t, `SELECT count(*) FROM calls WHERE n = 1`); got != 2 {
		t.Fatalf("message 1 ran %d times, want 2", got)
	}
	if gap < 200 {
		t.Fatalf("message 1 was retried %.1fms after it failed, want at least 200ms (the least jittered wait)", gap)
	}
}

// A permanent error, returned as such or from postbox.Decode of a payload
// that is not JSON, dead-letters the message after exactly one attempt.
func TestPermanentErrorDeadLettersAfterOneAttempt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, 2, 2, dispatcher.Options{MaxAttempts: 5, Backoff: dispatcher.Backoff{Initial: time.Millisecond, Max: time.Millisecond}})
	bad := &postbox.Message{Topic: "work", Key: "bad", Payload: []byte(`{"n": not json`)}
	if err := outbox.Send(ctx, b.pool, bad); err != nil {
		t.Fatal(err)
	}
	b.drain(t)
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		if err := b.logCall(ctx, d, ""); err != nil {
			return err
		}
		v, err := postbox.Decode[struct{ N int }](d.Payload)
		if err != nil {
			return err
		}
		if v.N == 1 {
			return postbox.Permanent(errors.New("order 1 is invalid"))
		}
		return recordEffect(ctx, tx, d)
	})
	c := b.consumer(t, inbox.Config{Handler: h})
	b.runUntilEmpty(t, c)

	if got := b.count(t, `SELECT count(*) FROM postbox.dead_letters WHERE attempts = 1`); got != 2 {
		t.Fatalf("dead letters after one attempt = %d, want 2", got)
	}
	for _, tc := range []struct {
		where, errLike string
	}{
		{`key = 'k1'`, `permanent: order 1 is invalid`},
		{`message_id = '` + bad.ID.String() + `'`, `permanent: postbox: decode payload%`},
	} {
		t.Run(tc.where, func(t *testing.T) {
			if got := b.count(t, `SELECT count(*) FROM postbox.dead_letters WHERE `+tc.where+
				` AND last_error LIKE $1 AND headers->>'x-retry-count' = '1' AND headers->>'x-original-error' = last_error`, tc.errLike); got != 1 {
				t.Errorf("no dead letter where %s with error like %q", tc.where, tc.errLike)
			}
		})
	}
	// The failed ones ran once each. (The batch's good delivery may run
	// twice: once in the optimistic pass the failure rolled back, once in
	// the careful one; its effect commits once.)
	if got := b.count(t, `SELECT count(*) FROM calls c WHERE c.n = 1 OR c.message_id = $1`, bad.ID); got != 2 {
		t.Fatalf("calls of the two invalid messages = %d, want 2 (one each)", got)
	}
	if got := b.effects(t); got != 1 {
		t.Fatalf("effects = %d, want 1", got)
	}
	if s := c.Stats(); s.Dead != 2 || s.Failed != 0 || s.Handled != 1 {
		t.Fatalf("stats = %+v, want 2 dead, 0 failed, 1 handled", s)
	}
}

// A panicking handler is a failed attempt: Run keeps going, the other
// messages are handled, and the message is retried and then handled.
func TestPanickingHandlerIsAFailedAttempt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 10
	b := setup(t, n, n, dispatcher.Options{MaxAttempts: 3, Backoff: dispatcher.Backoff{Initial: time.Millisecond, Max: time.Millisecond}})
	const victim = 3
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		if err := b.logCall(ctx, d, ""); err != nil {
			return err
		}
		if err := recordEffect(ctx, tx, d); err != nil {
			return err
		}
		if v, _ := postbox.Decode[struct{ N int }](d.Payload); v.N == victim && d.Attempt == 1 {
			panic("handler bug")
		}
		return nil
	})
	c := b.consumer(t, inbox.Config{Handler: h, Concurrency: 2, BatchSize: 4, PollInterval: 5 * time.Millisecond})
	stop, exited := run(t, c)
	waitFor(t, "every message handled", func() (bool, error) {
		n, err := count(ctx, b.pool, pgtest.PendingSQL)
		return n == 0, err
	})
	if exited() {
		t.Fatal("Run returned after a handler panicked")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := b.effects(t); got != n {
		t.Fatalf("effects = %d, want %d (the panicked attempt's effect rolled back)", got, n)
	}
	if got := b.count(t, `SELECT count(*) FROM calls WHERE n = $1`, victim); got != 2 {
		t.Fatalf("victim ran %d times, want 2", got)
	}
	if got := b.count(t, `SELECT count(*) FROM effects e JOIN calls c USING (message_id) WHERE c.n = $1 AND c.Attempt = 2`, victim); got != 1 {
		t.Fatal("victim not handled on its second attempt")
	}
	if s := c.Stats(); s.Failed != 1 || s.Handled != n || s.Dead != 0 {
		t.Fatalf("stats = %+v, want 1 failed and %d handled", s, n)
	}
}

// A handler that swallows a SQL error and returns nil has left the
// transaction aborted: its delivery fails (its effects roll back), and the
// other deliveries of the batch, before and after it, are handled.
func TestHandlerSwallowingSQLErrorFailsOnlyItsDelivery(t *testing.T) {
	t.Parallel()
	// The bad handler in the middle of the batch is caught at the next
	// savepoint; the one at the end, when the last savepoint is released.
	for _, victim := range []int{2, 4} {
		t.Run(fmt.Sprintf("victim %d of 5", victim+1), func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			const n = 5
			b := setup(t, n, n, dispatcher.Options{MaxAttempts: 3})
			h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
				if err := recordEffect(ctx, tx, d); err != nil {
					return err
				}
				if v, _ := postbox.Decode[struct{ N int }](d.Payload); v.N == victim {
					_, err := tx.Exec(ctx, `SELECT 1/0`)
					_ = err // swallowed: the bug under test
				}
				return nil
			})
			c := b.consumer(t, inbox.Config{Handler: h, BatchSize: 10})
			got, err := c.RunOnce(ctx)
			if err != nil {
				t.Fatalf("RunOnce: %v", err)
			}
			if got != n {
				t.Fatalf("claimed %d, want %d", got, n)
			}
			if got := b.count(t, `SELECT count(*) FROM effects WHERE n <> $1`, victim); got != n-1 {
				t.Fatalf("effects of the other messages = %d, want %d", got, n-1)
			}
			if got := b.count(t, `SELECT count(*) FROM effects WHERE n = $1`, victim); got != 0 {
				t.Fatalf("the failed delivery left %d effects", got)
			}
			if got := b.count(t, `SELECT count(*) FROM postbox.parked WHERE reason = 'retry' AND attempts = 1
				AND last_error LIKE 'handler returned nil but left the transaction aborted%' AND key = $1`, fmt.Sprintf("k%d", victim)); got != 1 {
				var state string
				b.pool.QueryRow(ctx, `SELECT concat_ws(' | ', reason, attempts, last_error) FROM postbox.parked`).Scan(&state)
				t.Fatalf("the failed delivery is not pending with 1 attempt and the blamed error: %s", state)
			}
			if got := b.count(t, `SELECT count(*) FROM postbox.processed`); got != n-1 {
				t.Fatalf("processed = %d, want %d", got, n-1)
			}
			if s := c.Stats(); s.Failed != 1 || s.Handled != n-1 || s.Errors != 0 {
				t.Fatalf("stats = %+v, want 1 failed, %d handled, no batch error", s, n-1)
			}
		})
	}
}

// A handler cannot commit or roll back the consumer's transaction.
func TestHandlerCommitGetsErrTxOwned(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, 2, 2, dispatcher.Options{})
	var commitErr, rollbackErr error
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		if err := recordEffect(ctx, tx, d); err != nil {
			return err
		}
		commitErr = tx.Commit(ctx)
		rollbackErr = tx.Rollback(ctx)
		return nil
	})
	c := b.consumer(t, inbox.Config{Handler: h, BatchSize: 10})
	if _, err := c.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(commitErr, inbox.ErrTxOwned) || !errors.Is(rollbackErr, inbox.ErrTxOwned) {
		t.Fatalf("Commit = %v, Rollback = %v, want ErrTxOwned", commitErr, rollbackErr)
	}
	// The refused calls changed nothing: both effects committed with the batch.
	if got := b.effects(t); got != 2 {
		t.Fatalf("effects = %d, want 2", got)
	}
	if got := b.count(t, pgtest.PendingSQL); got != 0 {
		t.Fatalf("inbox rows = %d, want 0", got)
	}
}

// A handler that overruns HandlerTimeout inside a query loses its
// connection (pgx closes it on cancel) and with it the batch; its failed
// attempt is still recorded, and the consumer carries on.
func TestHandlerTimeoutIsAFailedAttempt(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 4
	b := setup(t, n, n, dispatcher.Options{MaxAttempts: 3, Backoff: dispatcher.Backoff{Initial: time.Millisecond, Max: time.Millisecond}})
	const victim = 1
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		// What the previous attempt left on the row.
		var lastError *string
		if err := tx.QueryRow(ctx, `SELECT (SELECT last_error FROM postbox.parked WHERE subscriber = $1 AND message_id = $2)`,
			d.Subscriber, d.ID).Scan(&lastError); err != nil {
			return err
		}
		note := ""
		if lastError != nil {
			note = *lastError
		}
		if err := b.logCall(ctx, d, note); err != nil {
			return err
		}
		if err := recordEffect(ctx, tx, d); err != nil {
			return err
		}
		if v, _ := postbox.Decode[struct{ N int }](d.Payload); v.N == victim && d.Attempt == 1 {
			_, err := tx.Exec(ctx, `SELECT pg_sleep(5)`)
			return err
		}
		return nil
	})
	c := b.consumer(t, inbox.Config{Handler: h, BatchSize: 10, Concurrency: 1,
		HandlerTimeout: time.Second, PollInterval: 5 * time.Millisecond})
	stop, exited := run(t, c)
	waitFor(t, "every message handled", func() (bool, error) {
		n, err := count(ctx, b.pool, pgtest.PendingSQL)
		return n == 0, err
	})
	if exited() {
		t.Fatal("Run returned after a handler timed out")
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := b.effects(t); got != n {
		t.Fatalf("effects = %d, want %d", got, n)
	}
	if got := b.count(t, `SELECT count(DISTINCT message_id) FROM effects`); got != n {
		t.Fatalf("distinct effects = %d, want %d", got, n)
	}
	// The second call saw the first attempt recorded, with its error.
	var attempts []int
	var notes []string
	rows, err := b.pool.Query(ctx, `SELECT attempt, note FROM calls WHERE n = $1 ORDER BY id`, victim)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var a int
		var note string
		if err := rows.Scan(&a, &note); err != nil {
			t.Fatal(err)
		}
		attempts, notes = append(attempts, a), append(notes, note)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(attempts) != 2 || attempts[0] != 1 || attempts[1] != 2 {
		t.Fatalf("victim's attempts = %v, want [1 2]", attempts)
	}
	if !strings.Contains(notes[1], "timeout") && !strings.Contains(notes[1], "deadline") {
		t.Fatalf("recorded error of the timed-out attempt = %q, want a timeout", notes[1])
	}
	// At least the victim's attempt failed; on a loaded machine another
	// handler may run past the timeout too (a genuine failed attempt).
	if s := c.Stats(); s.Errors < 1 || s.Failed < 1 || s.Handled != n {
		t.Fatalf("stats = %+v, want at least 1 batch error, 1 failed attempt, %d handled", s, n)
	}
	// The timed-out query does not outlive its attempt on the server.
	if got := b.count(t, `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND state = 'active' AND query LIKE '%pg_sleep(5)%' AND pid <> pg_backend_pid()`); got != 0 {
		t.Fatalf("%d timed-out queries still running", got)
	}
}

// Whatever a handler's error says, its failure is recorded: an error text
// that PostgreSQL's text type cannot hold as is (a NUL byte, a long message
// cut inside a UTF-8 sequence) must not fail the batch, or the failure
// would never be recorded and the message would loop forever.
func TestAnyErrorTextIsRecorded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 3
	b := setup(t, n, n, dispatcher.Options{MaxAttempts: 1})
	errs := map[int]error{
		0: errors.New("payload byte \x00 rejected"),
		1: errors.New("x" + strings.Repeat("é", 3000)), // 6001 bytes, cut at 4096 inside an é
		2: errors.New("bad \xff byte"),
	}
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		v, err := postbox.Decode[struct{ N int }](d.Payload)
		if err != nil {
			return err
		}
		return errs[v.N]
	})
	c := b.consumer(t, inbox.Config{Handler: h, BatchSize: 10})
	if _, err := c.RunOnce(ctx); err != nil {
		t.Fatalf("RunOnce: %v", err)
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.dead_letters WHERE attempts = 1 AND headers->>'x-original-error' = last_error`); got != n {
		t.Fatalf("dead letters = %d, want %d", got, n)
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.dead_letters WHERE last_error LIKE 'x%' AND octet_length(last_error) <= 4096 AND octet_length(last_error) > 4000`); got != 1 {
		t.Fatal("the long error was not kept, cut to at most 4096 bytes")
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.dead_letters WHERE last_error LIKE 'payload byte % rejected'`); got != 1 {
		t.Fatal("the error with a NUL byte was not kept")
	}
}
