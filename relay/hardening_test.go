package relay_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/dlq"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

// streamKeys lists the stream's deliveries to subscriber, in seq order, as
// their payloads.
func streamPayloads(t *testing.T, ctx context.Context, pool *pgxpool.Pool, subscriber string) []string {
	t.Helper()
	rows, err := pool.Query(ctx, `SELECT convert_from(payload, 'UTF8') FROM postbox.inbox WHERE subscriber = $1 ORDER BY seq`, subscriber)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// The statements an idle relay and an idle consumer run write nothing: run
// inside a transaction, none of them assigns a transaction ID, so none can
// write WAL, commit a record or hold back the xmin horizon.
func TestIdlePollsWriteNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 2)
	if err := dispatcher.DeclareQueue(ctx, pool, "idle", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	marks := make([]int64, 16)
	for name, sql := range map[string]string{
		"relay batch":     `SELECT * FROM postbox.relay_batch(1000, 16777216, $1)`,
		"consumer claim":  `SELECT * FROM postbox.claim_batch('idle', 100, 0, '{}', false)`,
		"slot rotation":   `SELECT postbox.rotate_slots()`,
		"release delayed": `SELECT postbox.release_scheduled(1000)`,
	} {
		t.Run(name, func(t *testing.T) {
			var xid *int64
			err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				var args []any
				if strings.Contains(sql, "$1") {
					args = append(args, marks)
				}
				rows, err := tx.Query(ctx, sql, args...)
				if err != nil {
					return err
				}
				rows.Close()
				if err := rows.Err(); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, `SELECT pg_advisory_unlock_all()`); err != nil {
					return err
				}
				return tx.QueryRow(ctx, `SELECT txid_current_if_assigned()`).Scan(&xid)
			})
			if err != nil {
				t.Fatal(err)
			}
			if xid != nil {
				t.Fatalf("an idle %s assigned transaction ID %d: it writes", name, *xid)
			}
		})
	}
}

// A row the relay statement fails on (here a trigger refuses it; in life a
// constraint, a timeout, a bug) is found by halving the batch and
// quarantined as a dead letter of "_relay", carrying the error, while the
// ten good messages behind it are delivered. Replayed once the cause is
// gone, it is delivered too.
func TestPoisonRowIsQuarantinedAndReplayable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	if err := dispatcher.DeclareQueue(ctx, pool, "work", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.type = 'poison' THEN RAISE EXCEPTION 'this row cannot be delivered'; END IF; RETURN NEW; END $$;
		CREATE TRIGGER refuse_poison BEFORE INSERT ON postbox.inbox FOR EACH ROW EXECUTE FUNCTION refuse_poison()`); err != nil {
		t.Fatal(err)
	}
	msgs := []*postbox.Message{{Topic: "work", Type: "poison", Key: "k", Payload: []byte("poison")}}
	for i := range 10 {
		msgs = append(msgs, &postbox.Message{Topic: "work", Key: fmt.Sprint(i % 3), Payload: []byte(fmt.Sprint(i))})
	}
	if err := outbox.SendBatch(ctx, pool, msgs); err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(pool, relay.Config{BatchSize: 8})
	if err != nil {
		t.Fatal(err)
	}
	// Failed statements are errors of RunOnce; Drain stops at the first,
	// so drive RunOnce a bounded number of times.
	for range 20 {
		_, _ = r.RunOnce(ctx)
	}
	if got := len(streamPayloads(t, ctx, pool, "work")); got != 10 {
		t.Fatalf("delivered %d, want the 10 good messages", got)
	}
	if s := r.Stats(); s.Quarantined != 1 {
		t.Fatalf("stats = %+v, want 1 quarantined", s)
	}
	letters, err := dlq.List(ctx, pool, dlq.Filter{Subscriber: dlq.Relay})
	if err != nil {
		t.Fatal(err)
	}
	if len(letters) != 1 || letters[0].Type != "poison" || !strings.Contains(letters[0].LastError, "this row cannot be delivered") {
		t.Fatalf("quarantine = %+v, want the poison row with its error", letters)
	}
	if _, err := pool.Exec(ctx, `DROP TRIGGER refuse_poison ON postbox.inbox`); err != nil {
		t.Fatal(err)
	}
	if n, err := dlq.Replay(ctx, pool, dlq.Filter{Subscriber: dlq.Relay}); err != nil || n != 1 {
		t.Fatalf("replay = %d, %v; want 1", n, err)
	}
	if _, err := r.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if got := streamPayloads(t, ctx, pool, "work"); len(got) != 11 || got[10] != "poison" {
		t.Fatalf("after replay the stream holds %q, want the 10 and then the replayed one", got)
	}
}

// The outbox's CHECK constraints hold the limits the relay relies on, so a
// bad hand-written row fails at its INSERT with a clear error instead of
// later at the relay.
func TestBadHandWrittenRowFailsAtInsert(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 2)
	for name, tc := range map[string]struct{ key, topic, headers, constraint string }{
		"3000-byte key":      {strings.Repeat("k", 3000), "work", `{}`, "outbox_key"},
		"topic not a name":   {"k", "Not A Topic", `{}`, "outbox_topic"},
		"headers not object": {"k", "work", `[1, 2]`, "outbox_headers"},
		"negative key hash":  {"k", "work", `{}`, "outbox_key_hash"},
	} {
		t.Run(name, func(t *testing.T) {
			hash := 1
			if tc.constraint == "outbox_key_hash" {
				hash = -1
			}
			_, err := pool.Exec(ctx, `INSERT INTO postbox.outbox (message_id, key_hash, topic, key, payload, headers)
				VALUES (gen_random_uuid(), $1, $2, $3, '\x00', $4::jsonb)`, hash, tc.topic, tc.key, tc.headers)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "23514" || pgErr.ConstraintName != tc.constraint {
				t.Fatalf("INSERT: %v, want check violation of %s", err, tc.constraint)
			}
		})
	}
}

// withStatementTimeout opens a pool on pool's database whose sessions have
// statement_timeout set, as a relay role with that setting would.
func withStatementTimeout(t *testing.T, pool *pgxpool.Pool, timeout string) *pgxpool.Pool {
	t.Helper()
	cfg := pool.Config().Copy()
	cfg.ConnConfig.RuntimeParams["statement_timeout"] = timeout
	limited, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(limited.Close)
	return limited
}

// relayUntilEmpty drives r until the outbox is empty, at most n batches
// (failed statements are errors of RunOnce, which these tests provoke).
func relayUntilEmpty(t *testing.T, ctx context.Context, pool *pgxpool.Pool, r *relay.Relay, n int) {
	t.Helper()
	for range n {
		if pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.outbox`) == 0 {
			return
		}
		_, _ = r.RunOnce(ctx)
	}
}

// Large messages under a short statement_timeout on the relay's sessions
// (200ms) all arrive: batches are bounded by bytes (16 MiB by default) as
// well as rows.
func TestLargeMessagesUnderAStatementTimeout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	if err := dispatcher.DeclareQueue(ctx, pool, "big", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	const n, size = 60, 512 << 10
	// Incompressible, so that each payload costs its size to move.
	if _, err := pool.Exec(ctx, `INSERT INTO postbox.outbox (message_id, key_hash, is_queue, topic, payload)
		SELECT gen_random_uuid(), i, true, 'big', (SELECT string_agg(decode(md5(random()::text || i || j), 'hex'), ''::bytea)
		                                          FROM generate_series(1, $2 / 16) j)
		FROM generate_series(1, $1) i`, n, size); err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(withStatementTimeout(t, pool, "200ms"), relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	relayUntilEmpty(t, ctx, pool, r, 100)
	if got := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.inbox WHERE subscriber = 'big'`); got != n {
		t.Fatalf("delivered %d of %d (stats %+v)", got, n, r.Stats())
	}
	if s := r.Stats(); s.Quarantined != 0 || s.Batches < 2 {
		t.Fatalf("stats = %+v, want the %d MiB in several batches and nothing quarantined", s, n*size>>20)
	}
}

// A statement_timeout that a full batch exceeds (here every delivery
// costs 2ms in a trigger, so 1,000 cost 2s) only makes the batches
// smaller, down to what fits: every message is delivered, none quarantined.
func TestStatementTimeoutShrinksTheBatch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	if err := dispatcher.DeclareQueue(ctx, pool, "slow", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN PERFORM pg_sleep(0.002); RETURN NEW; END $$;
		CREATE TRIGGER slow_insert BEFORE INSERT ON postbox.inbox FOR EACH ROW EXECUTE FUNCTION slow_insert()`); err != nil {
		t.Fatal(err)
	}
	const n = 1000
	msgs := make([]*postbox.Message, n)
	for i := range msgs {
		msgs[i] = &postbox.Message{Topic: "slow", Payload: []byte(fmt.Sprint(i))}
	}
	if err := outbox.SendBatch(ctx, pool, msgs); err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(withStatementTimeout(t, pool, "200ms"), relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	relayUntilEmpty(t, ctx, pool, r, 300)
	if got := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.inbox WHERE subscriber = 'slow'`); got != n {
		t.Fatalf("delivered %d of %d (stats %+v)", got, n, r.Stats())
	}
	if s := r.Stats(); s.Quarantined != 0 || s.Errors == 0 {
		t.Fatalf("stats = %+v, want timed-out statements and nothing quarantined", s)
	}
}

// Per key, the order of delivery is the commit order of the transactions
// that published: a second producer's Publish of a key waits for the first
// producer's transaction, so the two cannot commit out of their id order,
// whatever the relay sees in between. Without the lock (2b463a5), the case
// "sees both commits at once" delivered [first second] for the commit
// order [second first].
func TestOverlappingProducersKeepCommitOrderPerKey(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name        string
		pollBetween bool
	}{{"relay polls between the commits", true}, {"relay sees both commits at once", false}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			overlappingProducers(t, c.pollBetween)
		})
	}
}

func overlappingProducers(t *testing.T, pollBetween bool) {
	ctx := context.Background()
	pool := pgtest.Pool(t, 6)
	if err := dispatcher.DeclareQueue(ctx, pool, "orders", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(pool, relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Rollback(ctx)
	if err := outbox.Send(ctx, first, &postbox.Message{Topic: "orders", Key: "order-1", Payload: []byte("first")}); err != nil {
		t.Fatal(err)
	}
	second, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Rollback(ctx)
	var sentSecond atomic.Bool
	published := make(chan error, 1)
	go func() {
		err := outbox.Send(ctx, second, &postbox.Message{Topic: "orders", Key: "order-1", Payload: []byte("second")})
		sentSecond.Store(err == nil)
		published <- err
	}()
	// Either the second Publish waits on the key's lock (as it must), or
	// (without the lock) it is written: then commit it first, the order a
	// relay seeing both at once would get wrong.
	pgtest.WaitFor(t, ctx, 10*time.Second, "the second producer waiting or done", func() bool {
		return sentSecond.Load() || pgtest.Count(t, ctx, pool, `SELECT count(*) FROM pg_locks
			WHERE locktype = 'advisory' AND NOT granted
			  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`) > 0
	})
	var commitOrder []string
	if sentSecond.Load() {
		if err := second.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		commitOrder = append(commitOrder, "second")
	}
	if pollBetween { // the relay polls between the commits
		if _, err := r.Drain(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := first.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	commitOrder = append(commitOrder, "first")
	if err := <-published; err != nil {
		t.Fatal(err)
	}
	if len(commitOrder) == 1 {
		if err := second.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		commitOrder = append(commitOrder, "second")
	}
	if _, err := r.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	if got := streamPayloads(t, ctx, pool, "orders"); strings.Join(got, ",") != strings.Join(commitOrder, ",") {
		t.Fatalf("delivered %v, committed %v", got, commitOrder)
	}
}

// A producer transaction that commits late (its row has a lower id than
// rows already relayed) is still delivered, by an ordinary batch: the
// relay's marks never pass an id an open transaction may still commit.
func TestLateCommitBelowRelayedRowsIsDelivered(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	if err := dispatcher.DeclareQueue(ctx, pool, "work", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(pool, relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	late, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer late.Rollback(ctx)
	if err := outbox.Send(ctx, late, &postbox.Message{Topic: "work", Payload: []byte("late")}); err != nil {
		t.Fatal(err)
	}
	// Many batches pass while it is open, each moving later ids.
	for i := range 20 {
		if err := outbox.Send(ctx, pool, &postbox.Message{Topic: "work", Payload: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Drain(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := late.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	got := streamPayloads(t, ctx, pool, "work")
	if len(got) != 21 || got[20] != "late" {
		t.Fatalf("stream = %v, want the 20 and then the late one", got)
	}
}

// Rotation truncates only slots nothing needs: a slot holding a pending
// delivery of a subscriber stays, however far the sequence has moved on,
// and a slot everyone is past is emptied. Dead letters and handled IDs live
// in tables that are never truncated.
func TestRotationKeepsWhatIsPending(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	for _, q := range []string{"stuck", "done"} {
		if err := dispatcher.DeclareQueue(ctx, pool, q, dispatcher.Options{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, q := range []string{"stuck", "done"} {
		if err := outbox.Send(ctx, pool, &postbox.Message{Topic: q, Payload: []byte(q)}); err != nil {
			t.Fatal(err)
		}
	}
	r, err := relay.New(pool, relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	slotOf := func(q string) int {
		return pgtest.Count(t, ctx, pool, `SELECT (seq >> 16) & 7 FROM postbox.inbox WHERE subscriber = $1`, q)
	}
	// "done" handled its delivery; "stuck" did not. Then the stream moves on
	// three slots.
	if _, err := pool.Exec(ctx, `UPDATE postbox.inbox_cursors c SET next_seq = r.seq + 1, epoch = epoch + 1
		FROM postbox.inbox r WHERE r.subscriber = 'done' AND c.subscriber = 'done' AND c.part = r.part`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `SELECT setval('postbox.inbox_seq', nextval('postbox.inbox_seq') + 3 * 65536)`); err != nil {
		t.Fatal(err)
	}
	r.Chores(ctx)
	if got := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.inbox WHERE subscriber = 'stuck'`); got != 1 {
		t.Fatalf("the pending delivery of slot %d is gone after rotation (%d left)", slotOf("stuck"), got)
	}
	if s := r.Stats(); s.Emptied != 0 && pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.inbox`) != 1 {
		t.Fatalf("stats %+v", s)
	}
	// Once "stuck" is past it too, the slot goes.
	if _, err := pool.Exec(ctx, `UPDATE postbox.inbox_cursors c SET next_seq = r.seq + 1, epoch = epoch + 1
		FROM postbox.inbox r WHERE r.subscriber = 'stuck' AND c.subscriber = 'stuck' AND c.part = r.part`); err != nil {
		t.Fatal(err)
	}
	r.Chores(ctx)
	if got := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.inbox`); got != 0 {
		t.Fatalf("%d stream rows left after every cursor passed them", got)
	}
	if s := r.Stats(); s.Emptied == 0 {
		t.Fatalf("stats = %+v, want a slot emptied", s)
	}
}

// A Sink whose Deliver never returns holds only the partition it was given:
// a second relay moves every other partition's messages meanwhile, and no
// transaction stays open across the hung call.
func TestHungSinkHoldsOnlyItsPartition(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 8)
	const n = 160
	msgs := make([]*postbox.Message, n)
	for i := range msgs {
		msgs[i] = &postbox.Message{Topic: "t", Key: fmt.Sprintf("k%d", i), Payload: []byte(fmt.Sprint(i))}
	}
	if err := outbox.PublishBatch(ctx, pool, msgs); err != nil {
		t.Fatal(err)
	}
	entered := make(chan int, 1)
	release := make(chan struct{})
	hung := dispatcher.SinkFunc(func(ctx context.Context, b []dispatcher.Envelope) error {
		entered <- int(b[0].KeyHash % 16)
		<-release // ignores its context: a sink that hangs
		return errors.New("released")
	})
	a, err := relay.New(pool, relay.Config{Sink: hung, SinkTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _, _ = a.RunOnce(ctx) }()
	held := <-entered
	defer func() { close(release); <-done }()

	var got atomic.Int64
	collect := dispatcher.SinkFunc(func(_ context.Context, b []dispatcher.Envelope) error {
		for _, e := range b {
			if int(e.KeyHash%16) == held {
				return fmt.Errorf("got a message of partition %d, which the hung relay holds", held)
			}
		}
		got.Add(int64(len(b)))
		return nil
	})
	b, err := relay.New(pool, relay.Config{Sink: collect})
	if err != nil {
		t.Fatal(err)
	}
	for range 40 {
		if _, err := b.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
	}
	want := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.outbox WHERE key_hash % 16 <> $1`, held)
	if want != 0 {
		t.Fatalf("%d messages of other partitions left in the outbox (moved %d)", want, got.Load())
	}
	if open := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND state = 'idle in transaction'`); open != 0 {
		t.Fatalf("%d transactions open while the sink hangs", open)
	}
}

// A Sink that keeps timing out on one message is handed it a bounded number
// of times; then it is quarantined and the rest moves on.
func TestRefusedSinkMessageIsResentBoundedTimes(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	msgs := make([]*postbox.Message, 5)
	for i := range msgs {
		msgs[i] = &postbox.Message{Topic: "t", Key: "one-key", Payload: []byte(fmt.Sprint(i))}
	}
	if err := outbox.PublishBatch(ctx, pool, msgs); err != nil {
		t.Fatal(err)
	}
	var sent atomic.Int64
	var delivered []string
	slow := dispatcher.SinkFunc(func(ctx context.Context, b []dispatcher.Envelope) error {
		for _, e := range b {
			if string(e.Payload) == "0" {
				sent.Add(1)
				<-ctx.Done() // sleeps past SinkTimeout
				return ctx.Err()
			}
		}
		for _, e := range b {
			delivered = append(delivered, string(e.Payload))
		}
		return nil
	})
	r, err := relay.New(pool, relay.Config{Sink: slow, SinkTimeout: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for range 40 {
		_, _ = r.RunOnce(ctx)
	}
	if got := sent.Load(); got < 2 || got > 12 {
		t.Fatalf("the refused message was handed over %d times, want a few and a bound", got)
	}
	if strings.Join(delivered, ",") != "1,2,3,4" {
		t.Fatalf("delivered %v, want the other four in order", delivered)
	}
	if n, err := dlq.Count(ctx, pool, dlq.Filter{Subscriber: dlq.Relay}); err != nil || n != 1 {
		t.Fatalf("quarantined %d (%v), want 1", n, err)
	}
}

// A message the sink refuses as permanent (postbox.Permanent) is
// quarantined as soon as it is alone, without the repeated tries a
// refusal that may pass gets.
func TestPermanentSinkRefusalQuarantinesAtOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	msgs := make([]*postbox.Message, 4)
	for i := range msgs {
		msgs[i] = &postbox.Message{Topic: "t", Key: "one-key", Payload: []byte(fmt.Sprint(i))}
	}
	if err := outbox.PublishBatch(ctx, pool, msgs); err != nil {
		t.Fatal(err)
	}
	var alone atomic.Int64
	sink := dispatcher.SinkFunc(func(ctx context.Context, b []dispatcher.Envelope) error {
		for _, e := range b {
			if string(e.Payload) == "0" {
				if len(b) == 1 {
					alone.Add(1)
				}
				return postbox.Permanent(errors.New("too large for the broker"))
			}
		}
		return nil
	})
	r, err := relay.New(pool, relay.Config{Sink: sink})
	if err != nil {
		t.Fatal(err)
	}
	for range 10 {
		_, _ = r.RunOnce(ctx)
	}
	if got := alone.Load(); got != 1 {
		t.Fatalf("handed over alone %d times, want once", got)
	}
	if n, err := dlq.Count(ctx, pool, dlq.Filter{Subscriber: dlq.Relay}); err != nil || n != 1 {
		t.Fatalf("quarantined %d (%v), want 1", n, err)
	}
}
