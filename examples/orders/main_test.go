package main

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox/internal/pgtest"
)

var summaryRE = regexp.MustCompile(`^orders: published=(\d+) handled=(\d+) duplicates=(\d+) lost=(\d+) dead=(\d+) replayed=(\d+)$`)

// TestRun plays the whole story on a fresh database and checks the summary
// line against the guarantees, then against the database itself.
func TestRun(t *testing.T) {
	t.Parallel()
	databaseURL := pgtest.URL(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var stdout, stderr bytes.Buffer
	if err := run(ctx, databaseURL, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr.String())
	}
	t.Logf("stderr:\n%s", stderr.String())

	out := stdout.String()
	if strings.Count(out, "\n") != 1 {
		t.Fatalf("stdout should be exactly one line, got %q", out)
	}
	line := strings.TrimSuffix(out, "\n")
	m := summaryRE.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("summary %q does not match %s", line, summaryRE)
	}
	n := func(i int) int64 {
		v, err := strconv.ParseInt(m[i], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	published, handled, duplicates, lost, dead, replayed := n(1), n(2), n(3), n(4), n(5), n(6)

	if duplicates != 0 {
		t.Errorf("duplicates = %d, want 0 (some effect was written twice)", duplicates)
	}
	if lost != 0 {
		t.Errorf("lost = %d, want 0 (some delivery has neither an effect nor a dead letter)", lost)
	}
	if dead < 1 {
		t.Errorf("dead = %d, want at least 1 (the malformed command stays dead)", dead)
	}
	if replayed < 1 {
		t.Errorf("replayed = %d, want at least 1 (the poison order was replayed)", replayed)
	}
	if handled <= 0 {
		t.Errorf("handled = %d, want more than 0", handled)
	}

	// The story is deterministic: 10 orders publish order.created and send
	// process-order (20), the legacy checkout sends 1, and each of the 10
	// good commands leads to a shipment request and an order.shipped (20).
	// Deliveries: 10 x inventory, notifications, analytics; 3 high-value;
	// 11 process-order; 10 shipments; 10 order.shipped to analytics = 64,
	// of which 1 (the malformed command) is dead.
	const want = "orders: published=41 handled=63 duplicates=0 lost=0 dead=1 replayed=1"
	if line != want {
		t.Errorf("summary:\n got %s\nwant %s", line, want)
	}
	// Cross-check against the database the line was counted from.
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var expected, pending, outbox, orders, shipments, replayedHandled int64
	err = conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM expected_deliveries),
	                                 (SELECT coalesce(sum(ready + waiting), 0) FROM postbox.queue_depths),
	                                 (SELECT count(*) FROM postbox.outbox),
	                                 (SELECT count(*) FROM orders),
	                                 (SELECT count(*) FROM shipments),
	                                 (SELECT count(*) FROM postbox.replays r
	                                   JOIN postbox.processed p ON p.subscriber = r.subscriber AND p.message_id = r.message_id)`).
		Scan(&expected, &pending, &outbox, &orders, &shipments, &replayedHandled)
	if err != nil {
		t.Fatal(err)
	}
	// Each order wrote two messages, the legacy checkout one, and each
	// shipment came from one request and published one order.shipped.
	if want := 2*orders + 1 + 2*shipments; published != want {
		t.Errorf("published = %d, want %d for %d orders and %d shipments", published, want, orders, shipments)
	}
	if handled+dead != expected {
		t.Errorf("handled %d + dead %d != %d expected deliveries", handled, dead, expected)
	}
	if pending != 0 || outbox != 0 {
		t.Errorf("after the run: %d pending deliveries, %d outbox rows; want none", pending, outbox)
	}
	if replayedHandled != replayed {
		t.Errorf("%d of %d replayed letters were handled, want all", replayedHandled, replayed)
	}
	// Every handled delivery, and only those, is marked handled: a mark
	// without its effect (or the other way round) would show here.
	var unmatched int64
	if err := conn.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM postbox.processed p
		        WHERE NOT EXISTS (SELECT 1 FROM effects e WHERE e.subscriber = p.subscriber AND e.message_id = p.message_id))
		     + (SELECT count(*) FROM (SELECT DISTINCT subscriber, message_id FROM effects) e
		        WHERE NOT EXISTS (SELECT 1 FROM postbox.processed p WHERE p.subscriber = e.subscriber AND p.message_id = e.message_id))`).
		Scan(&unmatched); err != nil {
		t.Fatal(err)
	}
	if unmatched != 0 {
		t.Errorf("%d deliveries marked handled without an effect, or with an effect but unmarked", unmatched)
	}
	var deadSubscriber, deadKey string
	err = conn.QueryRow(ctx, `SELECT subscriber, key FROM postbox.dead_letters`).Scan(&deadSubscriber, &deadKey)
	if err != nil {
		t.Fatalf("the one dead letter: %v", err)
	}
	if deadSubscriber != queueProcessOrder || deadKey != "ord-1011" {
		t.Errorf("dead letter is %s/%s, want the malformed command %s/ord-1011", deadSubscriber, deadKey, queueProcessOrder)
	}
	var reserved int
	if err := conn.QueryRow(ctx, `SELECT reserved FROM products WHERE sku = $1`, poisonSKU).Scan(&reserved); err != nil {
		t.Fatal(err)
	}
	if reserved != 1 {
		t.Errorf("%s reserved = %d after the replay, want 1", poisonSKU, reserved)
	}
}

func TestWithDatabase(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"postgres://postgres@127.0.0.1:5432/postgres", "postgres://postgres@127.0.0.1:5432/" + exampleDatabase},
		{"postgres://u:p%40ss@db:5432/app?sslmode=disable", "postgres://u:p%40ss@db:5432/" + exampleDatabase + "?sslmode=disable"},
		{"postgresql://db", "postgresql://db/" + exampleDatabase},
		{"host=db user=u dbname=app", "host=db user=u dbname=app dbname=" + exampleDatabase},
		{"", "dbname=" + exampleDatabase},
	}
	for _, tt := range tests {
		got, err := withDatabase(tt.in, exampleDatabase)
		if err != nil {
			t.Errorf("withDatabase(%q): %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("withDatabase(%q) = %q, want %q", tt.in, got, tt.want)
		}
		cfg, err := pgx.ParseConfig(got)
		if err != nil {
			t.Errorf("pgx cannot parse %q: %v", got, err)
			continue
		}
		if cfg.Database != exampleDatabase {
			t.Errorf("pgx reads database %q from %q, want %q", cfg.Database, got, exampleDatabase)
		}
	}
	if _, err := withDatabase("mysql://db/app", exampleDatabase); err == nil {
		t.Error("withDatabase accepted a mysql:// URL")
	}
}
