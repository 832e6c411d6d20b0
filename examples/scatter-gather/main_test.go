package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox/examples/internal/exampledb"
	"github.com/postbox-dev/postbox/internal/pgtest"
)

const wantSummary = "scatter-gather: orders=5 requests=15 replies=15 quotes=5 complete=4 timed_out=1 late=1 duplicates=0 dead=0"

// TestRun plays the story on a fresh database, as go run does, and wants
// exactly the summary every run prints; then checks the combined
// quotes against the quotes the services gave.
func TestRun(t *testing.T) {
	t.Parallel()
	databaseURL := pgtest.URL(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	if err := run(ctx, databaseURL, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr.String())
	}
	if got := stdout.String(); got != wantSummary+"\n" {
		t.Fatalf("stdout %q, want the one line %q\nstderr:\n%s", got, wantSummary, stderr.String())
	}

	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	// Each combined quote is the sum of the quotes its services gave
	// before the gather completed: all three, but shipping's for
	// Antarctica, which came late.
	var wrong int
	var timedOut, sources string
	err = conn.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM quotes q
		        WHERE q.total_cents <> (SELECT sum(g.cents) FROM quotes_given g
		                                WHERE g.order_id = q.order_id
		                                  AND NOT (g.order_id = 'ord-2003' AND g.service = 'shipping'))),
		       (SELECT order_id FROM quotes WHERE timed_out),
		       (SELECT sources FROM quotes WHERE timed_out)`).Scan(&wrong, &timedOut, &sources)
	if err != nil {
		t.Fatal(err)
	}
	if wrong != 0 || timedOut != "ord-2003" || sources != "inventory,payment" {
		t.Errorf("%d combined quotes do not add up; the timed-out one is %s from %s, want ord-2003 from inventory,payment",
			wrong, timedOut, sources)
	}
}

func TestWithDatabase(t *testing.T) {
	t.Parallel()
	got, err := exampledb.WithDatabase("postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", exampleDatabase)
	if err != nil || !strings.Contains(got, "/"+exampleDatabase+"?") {
		t.Errorf("withDatabase = %q, %v", got, err)
	}
}
