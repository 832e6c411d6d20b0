package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
)

// Dead letters replayed with postbox.replay_dead_letters become pending
// again and are handled by a running consumer, which sees x-replay-count;
// postbox.purge_dead_letters deletes dead letters for good.
func TestReplayedDeadLettersAreHandledAndPurgeDeletes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	const n = 3
	b := setup(t, n, n, dispatcher.Options{MaxAttempts: 2, Backoff: dispatcher.Backoff{Initial: time.Millisecond, Max: time.Millisecond}})
	b.exec(t, `CREATE TABLE fixed (at timestamptz)`)
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		if err := b.logCall(ctx, d, d.Headers[postbox.HeaderReplayCount]); err != nil {
			return err
		}
		v, err := postbox.Decode[struct{ N int }](d.Payload)
		if err != nil {
			return err
		}
		if v.N >= 100 {
			return postbox.Permanent(errors.New("unfixable"))
		}
		var fixed bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM fixed)`).Scan(&fixed); err != nil {
			return err
		}
		if !fixed {
			return errors.New("not fixed yet")
		}
		return recordEffect(ctx, tx, d)
	})
	c := b.consumer(t, inbox.Config{Handler: h, PollInterval: 5 * time.Millisecond})
	_, exited := run(t, c)
	waitFor(t, "all dead", func() (bool, error) {
		n, err := count(ctx, b.pool, `SELECT count(*) FROM postbox.dead_letters WHERE subscriber = 'work' AND attempts = 2 AND last_error = 'not fixed yet'`)
		return n == 3, err
	})
	b.exec(t, `INSERT INTO fixed VALUES (now())`)

	// One by ID, then the rest.
	var first string
	if err := b.pool.QueryRow(ctx, `SELECT message_id::text FROM calls WHERE n = 0 LIMIT 1`).Scan(&first); err != nil {
		t.Fatal(err)
	}
	replay := func(sql string, args ...any) int {
		t.Helper()
		var got int
		if err := b.pool.QueryRow(ctx, sql, args...).Scan(&got); err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got := replay(`SELECT postbox.replay_dead_letters('work', message_ids => ARRAY[$1::uuid])`, first); got != 1 {
		t.Fatalf("replayed %d by ID, want 1", got)
	}
	waitFor(t, "the replayed letter handled", func() (bool, error) {
		n, err := count(ctx, b.pool, `SELECT count(*) FROM effects`)
		return n == 1, err
	})
	if got := replay(`SELECT postbox.replay_dead_letters('work')`); got != 2 {
		t.Fatalf("replayed %d, want the other 2", got)
	}
	waitFor(t, "every replayed letter handled", func() (bool, error) {
		n, err := count(ctx, b.pool, pgtest.PendingSQL)
		return n == 0, err
	})
	if exited() {
		t.Fatal("Run returned")
	}
	if got := b.effects(t); got != n {
		t.Fatalf("effects = %d, want %d", got, n)
	}
	// The successful calls were first attempts again, and saw the replay.
	if got := b.count(t, `SELECT count(*) FROM calls c JOIN effects e USING (message_id) WHERE c.attempt = 1 AND c.note = '1'`); got != n {
		t.Fatalf("%d handled deliveries were first attempts with x-replay-count 1, want %d", got, n)
	}
	if got := b.count(t, `SELECT count(*) FROM calls WHERE note <> ''`); got != n {
		t.Fatalf("%d calls saw x-replay-count, want only the %d after the replay", got, n)
	}
	if got := b.count(t, `SELECT count(*) FROM postbox.replays WHERE subscriber = 'work' AND attempts = 2 AND last_error = 'not fixed yet'`); got != n {
		t.Fatalf("replays recorded = %d, want %d", got, n)
	}
	// Stats count a batch just after its commit, which the loop above may
	// see first.
	waitFor(t, "the stats of the committed batches", func() (bool, error) {
		s := c.Stats()
		return s.Dead == n && s.Failed == n && s.Handled == n, nil
	})

	// Two that can never succeed: purged.
	for _, v := range []int{100, 101} {
		if err := outbox.Send(ctx, b.pool, &postbox.Message{Topic: "work", Payload: fmt.Appendf(nil, `{"n":%d}`, v)}); err != nil {
			t.Fatal(err)
		}
	}
	b.drain(t)
	waitFor(t, "the unfixable ones dead", func() (bool, error) {
		n, err := count(ctx, b.pool, `SELECT count(*) FROM postbox.dead_letters WHERE last_error = 'permanent: unfixable'`)
		return n == 2, err
	})
	if got := replay(`SELECT postbox.purge_dead_letters('work')`); got != 2 {
		t.Fatalf("purged %d, want 2", got)
	}
	if got := b.count(t, pgtest.PendingSQL); got != 0 {
		t.Fatalf("inbox rows after purge = %d, want 0", got)
	}
	if got := b.effects(t); got != n {
		t.Fatalf("effects = %d after purge, want still %d", got, n)
	}
}
