package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

// send sends n messages to queue and returns their IDs.
func send(t *testing.T, pool *pgxpool.Pool, queue string, n int) []uuid.UUID {
	t.Helper()
	ids := make([]uuid.UUID, n)
	for i := range ids {
		msg := &postbox.Message{Topic: queue, Type: "payment.requested.v1", Payload: fmt.Appendf(nil, `{"n":%d}`, i)}
		if err := outbox.Send(context.Background(), pool, msg); err != nil {
			t.Fatal(err)
		}
		ids[i] = msg.ID
	}
	return ids
}

func dead(t *testing.T, pool *pgxpool.Pool, subscriber string) int {
	t.Helper()
	return pgtest.Count(t, context.Background(), pool, "SELECT count(*) FROM postbox.dead_letters WHERE subscriber = $1", subscriber)
}

func TestDLQReplayHandsLettersBackToConsumers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.URL(t)
	pool := openPool(t, url)

	// Sends to queues nobody declared become no-route dead letters.
	payments := send(t, pool, "payments", 20)
	refunds := send(t, pool, "refunds", 5)
	pgtest.Drain(t, ctx, pool)
	if d := dead(t, pool, "payments"); d != 20 {
		t.Fatalf("%d dead payments letters, want 20", d)
	}

	var letters []struct {
		Subscriber string          `json:"subscriber"`
		MessageID  uuid.UUID       `json:"message_id"`
		LastError  string          `json:"last_error"`
		Payload    json.RawMessage `json:"payload"`
	}
	runJSON(t, url, &letters, "dlq", "list", "--subscriber", "payments", "--error", "no-route", "--since", "1h")
	if len(letters) != 20 {
		t.Fatalf("dlq list --subscriber payments: %d letters, want 20", len(letters))
	}
	for _, l := range letters {
		if l.Subscriber != "payments" || l.LastError != "no-route" || !slices.Contains(payments, l.MessageID) || len(l.Payload) == 0 {
			t.Fatalf("dlq list: unexpected letter %+v", l)
		}
	}
	if out := runOK(t, url, "dlq", "list"); !strings.Contains(out, "refunds") || !strings.Contains(out, "payments") {
		t.Errorf("dlq list without --subscriber misses a subscriber:\n%s", out)
	}
	if out := runOK(t, url, "dlq", "show", refunds[0].String()); !strings.Contains(out, refunds[0].String()) || !strings.Contains(out, "no-route") {
		t.Errorf("dlq show:\n%s", out)
	}

	// Dry runs count and change nothing.
	if out := runOK(t, url, "dlq", "replay", "--subscriber", "payments", "--dry-run"); !strings.Contains(out, "would replay 20 dead letters") {
		t.Errorf("replay --dry-run printed %q", out)
	}
	var dry struct {
		Count  int  `json:"count"`
		DryRun bool `json:"dry_run"`
	}
	runJSON(t, url, &dry, "dlq", "replay", "--subscriber", "payments", "--dry-run", "--id", payments[0].String(), "--id", payments[1].String())
	if dry.Count != 2 || !dry.DryRun {
		t.Errorf("replay --dry-run with two --id = %+v, want count 2", dry)
	}
	if d := dead(t, pool, "payments"); d != 20 {
		t.Fatalf("after dry runs %d dead payments letters, want still 20", d)
	}
	if n := pgtest.Count(t, ctx, pool, "SELECT count(*) FROM postbox.replays"); n != 0 {
		t.Fatalf("dry runs recorded %d replays", n)
	}

	// Declare the queue, then replay in two steps.
	runOK(t, url, "queue", "declare", "payments", "--max-attempts", "3")
	if out := runOK(t, url, "dlq", "replay", "--subscriber", "payments", "--limit", "5"); !strings.Contains(out, "replayed 5 dead letters of payments") {
		t.Errorf("replay --limit 5 printed %q", out)
	}
	if d := dead(t, pool, "payments"); d != 15 {
		t.Fatalf("after replaying 5, %d dead letters, want 15", d)
	}
	if out := runOK(t, url, "dlq", "replay", "--subscriber", "payments"); !strings.Contains(out, "replayed 15 dead letters of payments") {
		t.Errorf("replay printed %q", out)
	}
	if d := dead(t, pool, "payments"); d != 0 {
		t.Fatalf("after replay, %d dead payments letters remain", d)
	}
	if d := dead(t, pool, "refunds"); d != 5 {
		t.Fatalf("replaying payments touched refunds: %d dead, want 5", d)
	}

	// They never reached a stream: the replays put them back into the
	// outbox, and the relay routes them to the queue declared since.
	r, err := relay.New(pool, relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := r.Drain(ctx); err != nil || res.Delivered != len(payments) {
		t.Fatalf("relay after replay: %+v, %v; want %d delivered", res, err, len(payments))
	}
	// A consumer now handles every replayed message, once.
	var mu sync.Mutex
	handled := map[uuid.UUID]string{}
	c, err := inbox.NewConsumer(pool, inbox.Config{
		Subscriber: "payments",
		NoListen:   true,
		Handler: inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
			mu.Lock()
			defer mu.Unlock()
			if _, dup := handled[d.ID]; dup {
				return fmt.Errorf("message %s handled twice", d.ID)
			}
			handled[d.ID] = d.Headers[postbox.HeaderReplayCount]
			return nil
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := c.RunOnce(ctx); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		n := len(handled)
		mu.Unlock()
		if n == len(payments) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("consumer handled %d of %d replayed letters", n, len(payments))
		}
	}
	for _, id := range payments {
		if rc, ok := handled[id]; !ok || rc != "1" {
			t.Errorf("message %s: handled %v with x-replay-count %q, want handled with 1", id, ok, rc)
		}
	}
	if n := pgtest.Count(t, ctx, pool, "SELECT count(*) FROM postbox.replays WHERE subscriber = 'payments'"); n != 20 {
		t.Errorf("postbox.replays holds %d payments rows, want 20", n)
	}

	// Purge: dry run, one by ID, then the rest.
	if out := runOK(t, url, "dlq", "purge", "--subscriber", "refunds", "--dry-run"); !strings.Contains(out, "would purge 5") {
		t.Errorf("purge --dry-run printed %q", out)
	}
	if d := dead(t, pool, "refunds"); d != 5 {
		t.Fatalf("purge --dry-run deleted letters: %d left, want 5", d)
	}
	if out := runOK(t, url, "dlq", "purge", "--subscriber", "refunds", "--id", refunds[0].String()); !strings.Contains(out, "purged 1 dead letter of refunds") {
		t.Errorf("purge --id printed %q", out)
	}
	if out := runOK(t, url, "dlq", "purge", "--subscriber", "refunds"); !strings.Contains(out, "purged 4 dead letters") {
		t.Errorf("purge printed %q", out)
	}
	if out := runOK(t, url, "dlq", "list"); !strings.Contains(out, "no dead letters") {
		t.Errorf("dlq list after purging everything:\n%s", out)
	}
}

// A replay dry run counts what a replay would take, which leaves out a
// letter whose key has an earlier dead letter the selection does not take;
// a purge dry run counts what a purge would delete. The relay's quarantine
// is addressed as _relay.
func TestDLQDryRunsAndTheRelaysQuarantine(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.URL(t)
	pool := openPool(t, url)
	var ids []uuid.UUID
	for i := range 2 {
		msg := &postbox.Message{Topic: "orders", Key: "order-1", Payload: fmt.Appendf(nil, `{"n":%d}`, i)}
		if err := outbox.Send(ctx, pool, msg); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, msg.ID)
	}
	pgtest.Drain(t, ctx, pool)
	if d := dead(t, pool, "orders"); d != 2 {
		t.Fatalf("%d dead orders letters, want 2 no-route", d)
	}

	later := ids[1].String()
	if out := runOK(t, url, "dlq", "replay", "--subscriber", "orders", "--id", later, "--dry-run"); !strings.Contains(out, "would replay 0 dead letters") {
		t.Errorf("replay --dry-run of the key's later letter printed %q, want 0 (it waits behind the first)", out)
	}
	if out := runOK(t, url, "dlq", "replay", "--subscriber", "orders", "--id", later); !strings.Contains(out, "replayed 0 dead letters") {
		t.Errorf("replay of the key's later letter printed %q, want 0", out)
	}
	if out := runOK(t, url, "dlq", "purge", "--subscriber", "orders", "--id", later, "--dry-run"); !strings.Contains(out, "would purge 1 dead letter of orders") {
		t.Errorf("purge --dry-run printed %q, want 1", out)
	}
	if out := runOK(t, url, "dlq", "replay", "--subscriber", "orders", "--dry-run"); !strings.Contains(out, "would replay 2 dead letters") {
		t.Errorf("replay --dry-run of both printed %q, want 2", out)
	}
	if d := dead(t, pool, "orders"); d != 2 {
		t.Fatalf("dry runs changed the dead letters: %d left, want 2", d)
	}

	// _relay is a subscriber for dlq, and nothing else is.
	if out := runOK(t, url, "dlq", "list", "--subscriber", "_relay"); !strings.Contains(out, "no dead letters") {
		t.Errorf("dlq list --subscriber _relay printed %q", out)
	}
	if out := runOK(t, url, "dlq", "replay", "--subscriber", "_relay"); !strings.Contains(out, "replayed 0 dead letters of _relay") {
		t.Errorf("dlq replay --subscriber _relay printed %q", out)
	}
	if res := run(t, []string{"POSTBOX_DATABASE_URL=" + url}, "dlq", "purge", "--subscriber", "_orders"); res.code != 2 || !strings.Contains(res.stderr, "--subscriber") {
		t.Errorf("dlq purge --subscriber _orders: exit %d, stderr %q; want 2 and a bad --subscriber", res.code, res.stderr)
	}
}
