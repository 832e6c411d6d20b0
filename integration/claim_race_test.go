package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
)

// A claim decides whether a partition has parked deliveries under that
// partition's lock, never before it. A batch that parks a key's delivery
// and commits between the claim's start and its lock on the key's
// partition must leave the key's next stream delivery blocked; deciding at
// the start (as a first version did) handed it out unblocked, to be
// handled before the parked one: out of order. The chaos suite found it.
func TestClaimSeesAParkCommittedWhileItWaited(t *testing.T) {
	ctx := testContext(t, time.Minute)
	pool := pgtest.Pool(t, 8)
	subscribe(t, ctx, pool, "s", "t", "")
	// A key outside order partition 0, which the claim visits first.
	key := ""
	for i := 0; ; i++ {
		key = fmt.Sprintf("key-%d", i)
		if dispatcher.Partition(key, 16) != 0 {
			break
		}
	}
	part := dispatcher.Partition(key, 16)
	m1 := &postbox.Message{Topic: "t", Key: key, Payload: []byte(`{"seq":1}`)}
	m2 := &postbox.Message{Topic: "t", Key: key, Payload: []byte(`{"seq":2}`)}
	if err := outbox.PublishBatch(ctx, pool, []*postbox.Message{m1, m2}); err != nil {
		t.Fatal(err)
	}
	drain(t, ctx, pool)

	conn := func() *pgx.Conn {
		c, err := pgx.ConnectConfig(ctx, pool.Config().ConnConfig.Copy())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		return c
	}
	x, z, y := conn(), conn(), conn()

	// X: a consumer batch on the key's partition that failed m1: it parks
	// m1 for a retry and moves the cursor past it; not yet committed.
	xtx, err := x.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		`SELECT pg_advisory_xact_lock(postbox.inbox_lock_key('s'), $1::smallint), $2::uuid`,
		`INSERT INTO postbox.parked (subscriber, message_id, part, seq, key_hash, attempts, reason, topic, type, key,
		    payload, headers, available_at, created_at, enqueued_at, last_error, last_error_at)
		 SELECT subscriber, message_id, part, seq, key_hash, 1, 'retry', topic, type, key, payload, headers,
		        now() + interval '1 hour', created_at, enqueued_at, 'handler failed', now()
		 FROM postbox.inbox WHERE subscriber = 's' AND message_id = $2 AND $1::smallint IS NOT NULL`,
		`UPDATE postbox.inbox_cursors SET next_seq = (SELECT seq + 1 FROM postbox.inbox WHERE subscriber = 's' AND message_id = $2),
		    epoch = epoch + 1 WHERE subscriber = 's' AND part = $1::smallint`,
	} {
		args := []any{part, m1.ID}
		if _, err := xtx.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// Z queues for an exclusive lock on the cursors (behind X): it makes
	// the claim below wait right after its DECLARE, in its first partition.
	zdone := make(chan error, 1)
	ztx, err := z.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		_, err := ztx.Exec(ctx, `LOCK TABLE postbox.inbox_cursors IN ACCESS EXCLUSIVE MODE`)
		zdone <- err
	}()
	zpid := int(z.PgConn().PID())
	pgtest.WaitFor(t, ctx, 10*time.Second, "Z waiting for its lock", func() bool {
		return pgtest.Count(t, ctx, pool, `SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'`, zpid) == 1
	})
	// Y: the claim of another consumer.
	type claimed struct {
		source  string
		seq     int64
		blocked bool
	}
	ydone := make(chan []claimed, 1)
	yerr := make(chan error, 1)
	go func() {
		rows, err := y.Query(ctx, `SELECT source, seq, blocked FROM postbox.claim_batch('s', 10, 0, '{}', false)`)
		if err != nil {
			yerr <- err
			return
		}
		var out []claimed
		for rows.Next() {
			var c claimed
			if err := rows.Scan(&c.source, &c.seq, &c.blocked); err != nil {
				yerr <- err
				return
			}
			out = append(out, c)
		}
		if err := rows.Err(); err != nil {
			yerr <- err
			return
		}
		ydone <- out
	}()
	ypid := int(y.PgConn().PID())
	pgtest.WaitFor(t, ctx, 10*time.Second, "Y's claim waiting behind Z", func() bool {
		return pgtest.Count(t, ctx, pool, `SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'`, ypid) == 1
	})
	// X commits (m1 parked, cursor past it, partition free); Z gets its
	// lock and lets go at once; Y's claim goes on.
	if err := xtx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-zdone; err != nil {
		t.Fatal(err)
	}
	if err := ztx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-yerr:
		t.Fatal(err)
	case out := <-ydone:
		t.Logf("claim returned %+v", out)
		for _, c := range out {
			if c.source == "stream" && !c.blocked {
				t.Errorf("the claim returned m2 (stream seq %d) unblocked while m1 of its key is parked: it would be handled first", c.seq)
			}
		}
		if len(out) == 0 {
			t.Errorf("nothing claimed")
		}
	}
}
