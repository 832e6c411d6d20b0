package main

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox/internal/pgtest"
)

// holdPartitions takes every relay partition in a session of its own, as a
// relay stuck in a Sink delivery would: other relays' statements succeed and
// move nothing. Closing the connection lets go.
func holdPartitions(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock(1886352244, p) FROM generate_series(0, 15) p"); err != nil {
		t.Fatal(err)
	}
	return conn
}

func TestReadyzFailsWhileTheRelayMakesNoProgress(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.URL(t)
	pool := openPool(t, url)
	subscribe(t, pool, "order.created", "billing")

	p := start(t, url, "relay", "--http", "127.0.0.1:0", "--log-format", "json", "--poll-interval", "10ms",
		"--stall-after", "300ms", "--janitor-interval", "0")
	base := "http://" + p.waitLog(t, "http listening", "addr")
	ready := func(want int, body string) func() bool {
		return func() bool {
			code, b := get(t, base+"/readyz")
			return code == want && strings.Contains(b, body)
		}
	}
	pgtest.WaitFor(t, ctx, 10*time.Second, "/readyz 200", ready(200, "ready"))

	// An idle relay on an empty outbox stays ready however long it idles.
	idle := time.Now()
	pgtest.WaitFor(t, ctx, 10*time.Second, "an idle second", func() bool { return time.Since(idle) > time.Second })
	if code, body := get(t, base+"/readyz"); code != 200 {
		t.Fatalf("idle relay, empty outbox: /readyz %d %q", code, body)
	}

	// Another session holds every partition: statements succeed, due
	// messages wait and nothing moves.
	holder := holdPartitions(t, url)
	publish(t, pool, "order.created", 5)
	pgtest.WaitFor(t, ctx, 10*time.Second, "/readyz 503: due messages not moving", ready(503, "due messages wait"))
	if code, _ := get(t, base+"/healthz"); code != 200 {
		t.Errorf("/healthz %d while the database answers", code)
	}

	// The statements themselves cannot run: the outbox is locked (a
	// migration waiting, a hand-run LOCK TABLE).
	locker, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Close(ctx)
	tx, err := locker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE postbox.outbox IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	holder.Close(ctx) // the relay's next statement now waits for the lock
	pgtest.WaitFor(t, ctx, 10*time.Second, "/readyz 503: no statement succeeds", ready(503, "no relay statement has succeeded"))

	// Unlocked, the relay moves the backlog and is ready again.
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	pgtest.WaitFor(t, ctx, 10*time.Second, "/readyz 200 again", ready(200, "ready"))
	pgtest.WaitFor(t, ctx, 10*time.Second, "the backlog moved", func() bool {
		return pgtest.Count(t, ctx, pool, "SELECT count(*) FROM postbox.outbox") == 0
	})
	if !strings.Contains(p.log(), "readiness: relay stalled") {
		t.Errorf("no log line says why the relay was not ready:\n%s", p.log())
	}
}

// /metrics answers quickly on a large backlog written straight into the
// tables, and shows its lag, with the counts marked as estimates.
func TestMetricsOnALargeBacklog(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.URL(t)
	pool := openPool(t, url)
	subscribe(t, pool, "order.created", "billing")
	const inboxRows, outboxRows = 120_000, 40_000
	for _, sql := range []string{
		`INSERT INTO postbox.inbox (subscriber, part, message_id, key_hash, topic, payload, available_at, created_at, enqueued_at)
		 SELECT 'billing', (g % 16)::smallint, gen_random_uuid(), g, 'order.created', '{}',
		        now() - interval '1 hour', now() - interval '1 hour', now() - interval '1 hour' + g * interval '1 microsecond'
		 FROM generate_series(1, 120000) g`,
		`INSERT INTO postbox.outbox (message_id, key_hash, topic, payload, created_at)
		 SELECT gen_random_uuid(), g, 'order.created', '{}', now() - interval '30 minutes' FROM generate_series(1, 40000) g`,
		"VACUUM ANALYZE postbox.inbox, postbox.outbox",
	} {
		if _, err := pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	holdPartitions(t, url) // a stalled relay: the outbox stays as it is

	p := start(t, url, "relay", "--http", "127.0.0.1:0", "--log-format", "json", "--janitor-interval", "0")
	base := "http://" + p.waitLog(t, "http listening", "addr")
	began := time.Now()
	code, body := get(t, base+"/metrics")
	took := time.Since(began)
	if code != 200 || metric(body, "postbox_database_up") != 1 {
		t.Fatalf("/metrics %d after %s, database_up %v:\n%s", code, took, metric(body, "postbox_database_up"), body)
	}
	t.Logf("/metrics answered in %s on %d stream rows and %d outbox rows", took, inboxRows, outboxRows)
	near := func(series string, want, tolerance float64) {
		t.Helper()
		if got := metric(body, series); got < want*(1-tolerance) || got > want*(1+tolerance) {
			t.Errorf("%s = %v, want %v ± %.0f%%", series, got, want, 100*tolerance)
		}
	}
	near(`postbox_inbox_depth{state="ready",subscriber="billing"}`, inboxRows, 0.2)
	near("postbox_outbox_pending", outboxRows, 0.2)
	near(`postbox_inbox_oldest_pending_seconds{subscriber="billing"}`, 3600, 0.05)
	near("postbox_relay_lag_seconds", 1800, 0.05)
	if got := metric(body, `postbox_inbox_depth_exact{subscriber="billing"}`); got != 0 {
		t.Errorf("postbox_inbox_depth_exact = %v, want 0: the depth is an estimate", got)
	}
	for _, series := range []string{`postbox_inbox_waiting{reason="backoff",subscriber="billing"}`, "postbox_outbox_due",
		`postbox_inbox_handled_per_minute{subscriber="billing"}`, "postbox_relay_batch_duration_seconds_count"} {
		if metric(body, series) < 0 {
			t.Errorf("%s missing", series)
		}
	}

	// postbox stats says the same, marking the estimates.
	var rep statsReport
	runJSON(t, url, &rep, "stats")
	if len(rep.Subscribers) != 1 || !slices.Contains(rep.Subscribers[0].Estimated, "ready") || !rep.Outbox.Estimated ||
		rep.Subscribers[0].OldestPendingSeconds < 3500 {
		t.Errorf("stats --json = %+v", rep)
	}
	if out := runOK(t, url, "stats"); !strings.Contains(out, "~") {
		t.Errorf("the stats table marks no estimate:\n%s", out)
	}
}
