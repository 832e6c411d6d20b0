package integration

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

// Contract 2, no loss: the relay's connection is killed (pg_terminate_backend)
// while it moves a batch. The batch rolls back whole, the relay carries on
// over a new connection, and every message ends in the inbox exactly once.
func TestRelayKilledMidBatchLosesAndDuplicatesNothing(t *testing.T) {
	t.Parallel()
	const (
		messages = 40_000
		batch    = 8_000
		appName  = "postbox-relay-under-test"
	)
	ctx := testContext(t, 90*time.Second)
	url := pgtest.URL(t)
	pool := newPool(t, url, 4, "")
	relayPool := newPool(t, url, 2, appName)
	subscribe(t, ctx, pool, "sink", "crash.test", "")

	start := time.Now()
	ids := make(map[uuid.UUID]bool, messages)
	chunk := make([]*postbox.Message, 0, 5000)
	for i := range messages {
		m := &postbox.Message{Topic: "crash.test", Key: fmt.Sprintf("key-%d", i%50), Payload: fmt.Appendf(nil, `{"i":%d}`, i)}
		chunk = append(chunk, m)
		if len(chunk) == cap(chunk) || i == messages-1 {
			if err := outbox.PublishBatch(ctx, pool, chunk); err != nil {
				t.Fatal(err)
			}
			for _, m := range chunk {
				ids[m.ID] = true
			}
			chunk = chunk[:0]
		}
	}
	t.Logf("preloaded in %s", time.Since(start))

	r, err := relay.New(relayPool, relay.Config{BatchSize: batch, PollInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var running sync.WaitGroup
	running.Add(1)
	go func() {
		defer running.Done()
		if err := r.Run(runCtx); err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	}()

	// Every batch commits whole, so the inbox stream only ever holds whole
	// batches (nothing consumes it here).
	inboxCount := func() int {
		n := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.inbox`)
		if n%batch != 0 {
			t.Fatalf("inbox holds %d rows, not a whole number of %d-row batches", n, batch)
		}
		return n
	}
	// Let one batch commit, then kill the relay's backend in a later one.
	pgtest.WaitFor(t, ctx, 30*time.Second, "the first batch", func() bool { return inboxCount() > 0 })
	var killedAt int
	pgtest.WaitFor(t, ctx, 30*time.Second, "a relay statement to kill", func() bool {
		if r.Stats().Errors > 0 {
			return true
		}
		var pid int32
		err := pool.QueryRow(ctx, `
			SELECT pid FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = $1
			  AND state = 'active' AND query LIKE '%postbox.relay_batch%'`, appName).Scan(&pid)
		if errors.Is(err, pgx.ErrNoRows) {
			if inboxCount() == messages {
				t.Fatal("the relay finished before its connection could be killed")
			}
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		killedAt = inboxCount()
		var ok bool
		if err := pool.QueryRow(ctx, `SELECT pg_terminate_backend($1)`, pid).Scan(&ok); err != nil {
			t.Fatal(err)
		}
		return false // a true here means only that the signal went out; wait for the relay to see it
	})
	t.Logf("%s: killed the relay's backend with %d of %d messages relayed; relay stats %+v", time.Since(start), killedAt, messages, r.Stats())

	pgtest.WaitFor(t, ctx, 60*time.Second, "every message relayed", func() bool {
		return inboxCount() == messages && pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.outbox`) == 0
	})
	t.Logf("%s: all relayed", time.Since(start))
	stop()
	running.Wait()

	rows, err := pool.Query(ctx, `SELECT message_id FROM postbox.inbox WHERE subscriber = 'sink'`)
	if err != nil {
		t.Fatal(err)
	}
	seen := make(map[uuid.UUID]bool, messages)
	for rows.Next() {
		var id uuid.UUID
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		if seen[id] {
			t.Errorf("message %s delivered twice", id)
		}
		if !ids[id] {
			t.Errorf("message %s delivered but never published", id)
		}
		seen[id] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(seen) != messages {
		t.Errorf("%d distinct messages delivered, want %d", len(seen), messages)
	}
	if st := r.Stats(); st.Claimed != messages || st.Errors < 1 {
		t.Errorf("relay stats %+v, want %d claimed and at least one failed batch", st, messages)
	}
}
