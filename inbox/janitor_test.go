package inbox_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/outbox"
)

// janitorLock is the advisory lock key of schema/queries/inbox.sql
// (TryJanitorLock); the test takes it to play a second janitor.
const janitorLock = 7306640421744685166

// The janitor forgets handled IDs older than the subscriber's dedup window, in
// batches, and keeps the others, which still stop duplicates.
func TestJanitorForgetsOnlyIDsPastTheWindow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 10
	b := setup(t, n, n, dispatcher.Options{DedupWindow: time.Hour})
	c := b.consumer(t, inbox.Config{Handler: recordEffect})
	b.runUntilEmpty(t, c)
	// Messages 0-5 were handled two hours ago, 6-7 fifty minutes ago, 8-9 now.
	b.exec(t, `UPDATE postbox.processed p SET processed_at = now() - CASE WHEN e.n < 6 THEN interval '2 hours' ELSE interval '50 minutes' END
		FROM effects e WHERE e.message_id = p.message_id AND e.n < 8`)
	j, err := inbox.NewJanitor(b.pool, inbox.JanitorConfig{BatchSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	got, err := j.RunOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got != 6 {
		t.Fatalf("janitor deleted %d, want 6", got)
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.processed p JOIN effects e USING (message_id) WHERE e.n >= 6`); got != 4 {
		t.Fatalf("kept %d recent IDs, want 4", got)
	}
	if got, err := j.RunOnce(ctx); err != nil || got != 0 {
		t.Fatalf("second sweep deleted %d (%v), want 0", got, err)
	}

	// Sent again: a remembered ID is dropped, a forgotten one is delivered.
	var kept, forgotten postbox.Message
	for _, m := range []struct {
		msg *postbox.Message
		n   int
	}{{&forgotten, 0}, {&kept, 6}} {
		if err := b.pool.QueryRow(ctx, `SELECT message_id, key, convert_to(json_build_object('n', n)::text, 'UTF8') FROM effects WHERE n = $1`, m.n).
			Scan(&m.msg.ID, &m.msg.Key, &m.msg.Payload); err != nil {
			t.Fatal(err)
		}
		m.msg.Topic = "work"
		if err := outbox.Send(ctx, b.pool, m.msg); err != nil {
			t.Fatal(err)
		}
	}
	if res := b.drain(t); res.Claimed != 2 || res.Delivered != 1 {
		t.Fatalf("relay moved %+v, want 2 claimed and 1 delivered", res)
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.inbox r
		JOIN postbox.inbox_cursors c ON c.subscriber = r.subscriber AND c.part = r.part AND r.seq >= c.next_seq
		WHERE r.message_id = $1`, forgotten.ID); got != 1 {
		t.Fatal("the forgotten ID was not delivered again")
	}
}

// Only one janitor sweeps at a time: while another holds the lock, RunOnce
// deletes nothing; two janitors at once together delete each row once.
func TestJanitorsTakeTurns(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 6
	b := setup(t, n, n, dispatcher.Options{DedupWindow: time.Hour})
	c := b.consumer(t, inbox.Config{Handler: recordEffect})
	b.runUntilEmpty(t, c)
	b.exec(t, `UPDATE postbox.processed SET processed_at = now() - interval '1 day'`)

	j1, err := inbox.NewJanitor(b.pool, inbox.JanitorConfig{BatchSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	j2, err := inbox.NewJanitor(b.pool, inbox.JanitorConfig{BatchSize: 2})
	if err != nil {
		t.Fatal(err)
	}
	other, err := b.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(janitorLock)); err != nil {
		t.Fatal(err)
	}
	if got, err := j1.RunOnce(ctx); err != nil || got != 0 {
		t.Fatalf("RunOnce while another janitor holds the lock = %d, %v; want 0", got, err)
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.processed`); got != n {
		t.Fatalf("processed = %d while locked, want %d", got, n)
	}
	if err := other.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	var (
		wg    sync.WaitGroup
		total [2]int
		errs  [2]error
	)
	for i, j := range []*inbox.Janitor{j1, j2} {
		wg.Go(func() { total[i], errs[i] = j.RunOnce(ctx) })
	}
	wg.Wait()
	if errs[0] != nil || errs[1] != nil {
		t.Fatal(errs)
	}
	if total[0]+total[1] != n {
		t.Fatalf("janitors deleted %d + %d, want %d in all", total[0], total[1], n)
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.processed`); got != 0 {
		t.Fatalf("processed = %d, want 0", got)
	}
}

// IDs marked for a subscriber that is not declared (HandleOnce) are
// forgotten after the default window of 7 days, whatever the windows of the
// declared subscribers.
func TestJanitorUsesDefaultWindowForUndeclaredSubscribers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := newBundle(t, "archive")
	if err := dispatcher.DeclareQueue(ctx, b.pool, "archive", dispatcher.Options{DedupWindow: 30 * 24 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	nop := inbox.HandlerFunc(func(context.Context, pgx.Tx, *inbox.Delivery) error { return nil })
	for _, sub := range []string{"webhooks", "webhooks", "archive"} {
		if _, err := inbox.HandleOnce(ctx, b.pool, sub, &postbox.Message{ID: postbox.NewID()}, nop); err != nil {
			t.Fatal(err)
		}
	}
	// Eight days old: past the default window, within archive's 30 days.
	b.exec(t, `UPDATE postbox.processed SET processed_at = now() - interval '8 days'
		WHERE message_id IN (SELECT min(message_id::text)::uuid FROM postbox.processed GROUP BY subscriber)`)
	j, err := inbox.NewJanitor(b.pool, inbox.JanitorConfig{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := j.RunOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got != 1 {
		t.Fatalf("deleted %d, want 1 (the old undeclared one)", got)
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.processed WHERE subscriber = 'webhooks' AND processed_at < now() - interval '7 days'`); got != 0 {
		t.Fatal("an undeclared subscriber's ID older than 7 days was kept")
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.processed WHERE subscriber = 'archive'`); got != 1 {
		t.Fatal("archive's 8-day-old ID was forgotten within its 30-day window")
	}
}
