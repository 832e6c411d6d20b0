package stats_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/db"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/stats"
)

// backlogRound writes a backlog straight into the tables, as a stalled
// consumer and relay would leave it: stream rows for "big" (three in four)
// and "other", an hour old; parked deliveries and dead letters of "big";
// outbox rows; and handled IDs of "big", of which the first round's are
// recent and later rounds' are older than the rate window.
func backlogRound(stream, parked, outbox int, recent bool) []statement {
	return []statement{
		{`INSERT INTO postbox.inbox (subscriber, part, message_id, key_hash, topic, type, key, payload,
                           available_at, created_at, enqueued_at)
SELECT CASE WHEN g % 4 = 0 THEN 'other' ELSE 'big' END, (g % 16)::smallint, gen_random_uuid(), g,
       'orders.created', 'order.created.v1', 'order-' || (g % 5000), '\x7b7d',
       now() - interval '1 hour', now() - interval '1 hour', now() - interval '1 hour' + g * interval '1 microsecond'
FROM generate_series(1, $1::integer) g`, []any{stream}},
		{`INSERT INTO postbox.parked (subscriber, message_id, part, seq, key_hash, attempts, reason, topic, key, payload,
                            available_at, created_at, enqueued_at, last_error)
SELECT 'big', gen_random_uuid(), (g % 16)::smallint, nextval('postbox.inbox_seq'), g,
       CASE WHEN g % 3 = 0 THEN 1 ELSE 0 END,
       CASE WHEN g % 3 = 0 THEN 'retry' ELSE 'blocked' END, 'orders.created', 'parked-' || g, '\x7b7d',
       CASE WHEN g % 3 = 0 THEN now() + interval '1 hour' ELSE 'infinity' END,
       now() - interval '2 hours', now() - interval '2 hours', CASE WHEN g % 3 = 0 THEN 'boom' END
FROM generate_series(1, $1::integer) g`, []any{parked}},
		{`INSERT INTO postbox.dead_letters (subscriber, message_id, part, seq, key_hash, topic, payload, created_at, last_error)
SELECT 'big', gen_random_uuid(), (g % 16)::smallint, nextval('postbox.inbox_seq'), g, 'orders.created', '\x7b7d',
       now(), 'boom'
FROM generate_series(1, $1::integer) g`, []any{parked}},
		{`INSERT INTO postbox.outbox_0 (slot, message_id, key_hash, topic, payload, created_at)
SELECT 0, gen_random_uuid(), g, 'orders.created', '\x7b7d', now() - interval '30 minutes'
FROM generate_series(1, $1::integer) g`, []any{outbox}},
		{`INSERT INTO postbox.processed (subscriber, message_id, processed_at)
SELECT 'big', gen_random_uuid(),
       CASE WHEN $2::boolean THEN now() - interval '10 minutes' + g * (interval '10 minutes' / $1::integer)
            ELSE now() - interval '3 hours' + g * interval '1 microsecond' END
FROM generate_series(1, $1::integer) g`, []any{outbox, recent}},
	}
}

type statement struct {
	sql  string
	args []any
}

// Read costs the same on a backlog twice as large: every statement touches
// about as many buffers (EXPLAIN ANALYZE, BUFFERS), where counting would
// touch twice as many. And the figures past the cap are estimates close to
// the truth, with the lag exact.
func TestReadIsBoundedWhateverTheBacklog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	for _, name := range []string{"big", "other"} {
		if err := dispatcher.DeclareSubscriber(ctx, pool, name, dispatcher.Options{}); err != nil {
			t.Fatal(err)
		}
	}
	const stream, parked, outbox = 80_000, 8_000, 30_000
	write := func(recent bool) {
		t.Helper()
		for _, st := range backlogRound(stream, parked, outbox, recent) {
			if _, err := pool.Exec(ctx, st.sql, st.args...); err != nil {
				t.Fatal(err)
			}
		}
		// What autovacuum does after inserts: statistics, the visibility
		// map, and BRIN summaries of the new pages.
		if _, err := pool.Exec(ctx, `VACUUM ANALYZE postbox.inbox, postbox.parked, postbox.dead_letters,
			postbox.outbox, postbox.processed`); err != nil {
			t.Fatal(err)
		}
	}

	write(true)
	before := buffers(t, pool)
	write(false)
	after := buffers(t, pool)
	// What each statement may touch whatever the backlog: a buffer per row
	// it samples (the caps) and the index pages on the way; StatsHandled
	// reads the rate window's BRIN ranges (128 pages each), so it may grow
	// by one range where the rounds meet, not with the table.
	limit, perPart := stats.DefaultCap, (stats.DefaultCap+15)/16
	budget := map[string]int{
		"StatsNames":       50,
		"StatsStream":      16*(perPart+20) + 200,
		"StatsParked":      limit * 6 / 5,
		"StatsDead":        limit * 6 / 5,
		"StatsBlockedKeys": 8 * stats.BlockedKeysVisit,
		"StatsOutbox":      limit * 6 / 5,
		"StatsHandled":     before["StatsHandled"]*5/4 + 150,
	}
	for name, b := range before {
		a := after[name]
		t.Logf("%s: %d buffers, then %d on twice the backlog (budget %d)", name, b, a, budget[name])
		if a > budget[name] {
			t.Errorf("%s touched %d buffers on twice the backlog (%d before), more than its %d", name, a, b, budget[name])
		}
	}

	ov, err := stats.Read(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	var big, other stats.Subscriber
	for _, s := range ov.Subscribers {
		switch s.Name {
		case "big":
			big = s
		case "other":
			other = s
		}
	}
	near := func(what string, c stats.Count, want int64) {
		t.Helper()
		if c.Exact || c.N < want*8/10 || c.N > want*12/10 {
			t.Errorf("%s = %v, want an estimate within 20%% of %d", what, c, want)
		}
	}
	near("big's ready", big.Ready, 2*stream*3/4)
	near("other's ready", other.Ready, 2*stream/4)
	near("big's dead", big.Dead, 2*parked)
	near("big's blocked", big.Blocked, 2*parked*2/3)
	near("big's backoff", big.InBackoff, 2*parked/3)
	near("outbox", ov.Outbox.Pending, 2*outbox)
	if big.Lag < 2*time.Hour-time.Minute || big.Lag > 2*time.Hour+time.Minute {
		t.Errorf("big's lag = %v, want the two hours of its oldest parked delivery", big.Lag)
	}
	if other.Lag < time.Hour-time.Minute || other.Lag > time.Hour+time.Minute || !other.LagExact {
		t.Errorf("other's lag = %v (exact %v), want the hour of its oldest stream row", other.Lag, other.LagExact)
	}
	if ov.Outbox.Age < 29*time.Minute || ov.Outbox.Age > 31*time.Minute {
		t.Errorf("outbox age = %v, want 30m", ov.Outbox.Age)
	}
	// The first round's handled IDs fell within the last ten minutes; the
	// second round's long before the window.
	if want := float64(outbox) / 10; big.HandledPerMinute < want*0.8 || big.HandledPerMinute > want*1.2 || !big.HandledExact {
		t.Errorf("big handled %v per minute (exact %v), want about %v", big.HandledPerMinute, big.HandledExact, want)
	}
}

// buffers runs every statement of a Read under EXPLAIN (ANALYZE, BUFFERS)
// with the settings Read uses, and returns the buffers each touched.
func buffers(t *testing.T, pool *pgxpool.Pool) map[string]int {
	t.Helper()
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	q := db.New(tx)
	planner := func(bitmap string) {
		t.Helper()
		if err := q.StatsPlanner(ctx, db.StatsPlannerParams{Seqscan: "off", Bitmapscan: bitmap}); err != nil {
			t.Fatal(err)
		}
	}
	names := []string{"big", "other"}
	perPart := (stats.DefaultCap + 15) / 16
	got := map[string]int{}
	for _, st := range []struct {
		name   string
		sql    string
		args   []any
		bitmap string
	}{
		{"StatsNames", db.StatsNames, []any{stats.DefaultMaxNames}, "off"},
		{"StatsStream", db.StatsStream, []any{perPart, nil}, "off"},
		{"StatsParked", db.StatsParked, []any{names, stats.DefaultCap}, "off"},
		{"StatsDead", db.StatsDead, []any{stats.DefaultCap, names}, "off"},
		{"StatsBlockedKeys", db.StatsBlockedKeys, []any{"big", stats.DefaultBlockedKeys, stats.BlockedKeysVisit}, "off"},
		{"StatsOutbox", db.StatsOutbox, []any{stats.DefaultCap}, "off"},
		{"StatsHandled", db.StatsHandled, []any{stats.DefaultRateWindow.Seconds(), stats.DefaultRateCap}, "on"},
	} {
		planner(st.bitmap)
		var out []byte
		if err := tx.QueryRow(ctx, "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "+st.sql, st.args...).Scan(&out); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		var plan []struct {
			Plan struct {
				Hit  int `json:"Shared Hit Blocks"`
				Read int `json:"Shared Read Blocks"`
			}
		}
		if err := json.Unmarshal(out, &plan); err != nil || len(plan) != 1 {
			t.Fatalf("%s: %v\n%s", st.name, err, out)
		}
		got[st.name] = plan[0].Plan.Hit + plan[0].Plan.Read
	}
	return got
}
