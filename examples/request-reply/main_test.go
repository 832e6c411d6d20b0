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

const wantSummary = "request-reply: requests=16 answered=12 late=1 async=3 replies=16 duplicates=0 dead=0 reply_queues=0"

// TestRun plays the story on a fresh database, as go run does, and wants
// exactly the summary every run prints; then checks the answers
// against the database.
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
	var wrong, queries, replyHandled int
	err = conn.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM answers a JOIN stock s USING (sku) WHERE a.on_hand <> s.on_hand)
		     + (SELECT count(*) FROM handled_replies h JOIN stock s USING (sku) WHERE h.on_hand <> s.on_hand)
		     + (SELECT count(*) FROM answers a JOIN stock_queries q USING (request_id) WHERE q.sku <> a.sku),
		       (SELECT count(*) FROM postbox.processed WHERE subscriber = 'stock-queries'),
		       (SELECT count(*) FROM postbox.processed WHERE subscriber LIKE 'checkout.reply.%')`).
		Scan(&wrong, &queries, &replyHandled)
	if err != nil {
		t.Fatal(err)
	}
	if wrong != 0 {
		t.Errorf("%d answers or replies do not match the stock they asked about", wrong)
	}
	// Each query handled once by the inventory service, each reply once
	// by a reply queue (the dedup marks outlive the dropped queues).
	if queries != 16 || replyHandled != 16 {
		t.Errorf("handled %d queries and %d replies, want 16 of each", queries, replyHandled)
	}
}

func TestWithDatabase(t *testing.T) {
	t.Parallel()
	got, err := exampledb.WithDatabase("postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable", exampleDatabase)
	if err != nil || !strings.Contains(got, "/"+exampleDatabase+"?") {
		t.Errorf("withDatabase = %q, %v", got, err)
	}
}
