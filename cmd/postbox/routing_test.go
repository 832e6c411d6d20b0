package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
)

func TestRoutingCommands(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.URL(t)
	pool := openPool(t, url)

	if out := runOK(t, url, "queue", "declare", "orders", "--max-attempts", "3", "--backoff-initial", "2s"); !strings.Contains(out, "declared queue orders") {
		t.Errorf("queue declare printed %q", out)
	}
	// Flags after the name; only the flags given change.
	if out := runOK(t, url, "queue", "declare", "orders", "--dedup-window", "1h"); !strings.Contains(out, "updated queue orders") {
		t.Errorf("second queue declare printed %q", out)
	}
	q, err := dispatcher.GetSubscriber(ctx, pool, "orders")
	if err != nil {
		t.Fatal(err)
	}
	if q.Kind != dispatcher.KindQueue || q.Options.MaxAttempts != 3 || q.Options.Backoff.Initial != 2*time.Second || q.Options.DedupWindow != time.Hour ||
		q.Options.KeyOnDead != dispatcher.KeyProceeds {
		t.Fatalf("queue orders = %+v, want a queue with max attempts 3, backoff 2s, dedup window 1h, keys proceeding", q)
	}
	// --key-on-dead changes only that setting.
	runOK(t, url, "queue", "declare", "orders", "--key-on-dead", "park")
	if q, err := dispatcher.GetSubscriber(ctx, pool, "orders"); err != nil || q.Options.KeyOnDead != dispatcher.KeyParks || q.Options.MaxAttempts != 3 {
		t.Fatalf("after --key-on-dead park: %+v, %v", q, err)
	}
	if res := run(t, []string{"POSTBOX_DATABASE_URL=" + url}, "queue", "declare", "orders", "--key-on-dead", "wait"); res.code != 2 || !strings.Contains(res.stderr, "--key-on-dead") {
		t.Errorf("--key-on-dead wait: exit %d, stderr %q; want 2", res.code, res.stderr)
	}

	runOK(t, url, "subscribe", "--subscriber", "billing", "--topic", "order.*", "--filter", "$.total >= 100")
	runOK(t, url, "subscribe", "--subscriber", "audit", "--topic", "order.#")
	subs, err := dispatcher.Subscriptions(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if len(subs) != 2 || subs[0].Subscriber != "audit" || subs[1].Topic != "order.*" || subs[1].Filter == "" {
		t.Fatalf("subscriptions = %+v", subs)
	}
	if res := run(t, []string{"POSTBOX_DATABASE_URL=" + url}, "subscribe", "--subscriber", "orders", "--topic", "x"); res.code != 1 || !strings.Contains(res.stderr, "is a queue") {
		t.Errorf("subscribing a queue: exit %d, stderr %q; want 1 and a kind conflict", res.code, res.stderr)
	}
	if res := run(t, []string{"POSTBOX_DATABASE_URL=" + url}, "subscribe", "--subscriber", "x", "--topic", "x", "--filter", "$$ nope"); res.code != 2 || !strings.Contains(res.stderr, "postbox: invalid Subscription.Filter") {
		t.Errorf("a malformed filter: exit %d, stderr %q; want 2 and invalid Subscription.Filter", res.code, res.stderr)
	}

	var queues []struct {
		Name          string `json:"name"`
		Kind          string `json:"kind"`
		MaxAttempts   int    `json:"max_attempts"`
		KeyOnDead     string `json:"key_on_dead"`
		Subscriptions []struct {
			Topic  string `json:"topic"`
			Filter string `json:"filter"`
		} `json:"subscriptions"`
	}
	runJSON(t, url, &queues, "queues")
	if len(queues) != 3 || queues[0].Name != "audit" || queues[1].Name != "billing" || queues[2].Kind != "queue" ||
		queues[2].MaxAttempts != 3 || queues[2].KeyOnDead != "park" || queues[0].KeyOnDead != "proceed" ||
		len(queues[1].Subscriptions) != 1 || queues[1].Subscriptions[0].Filter == "" {
		t.Fatalf("queues --json = %+v", queues)
	}
	if out := runOK(t, url, "queues"); !strings.Contains(out, "order.#") || !strings.Contains(out, "MAX ATTEMPTS") || !strings.Contains(out, "KEY ON DEAD") {
		t.Errorf("queues table:\n%s", out)
	}

	runOK(t, url, "unsubscribe", "--subscriber", "audit", "--topic", "order.#")
	if subs, err := dispatcher.Subscriptions(ctx, pool); err != nil || len(subs) != 1 {
		t.Fatalf("after unsubscribe: %+v, %v; want one subscription", subs, err)
	}
	if res := run(t, []string{"POSTBOX_DATABASE_URL=" + url}, "unsubscribe", "--subscriber", "audit", "--topic", "order.#"); res.code != 1 || !strings.Contains(res.stderr, "not found") {
		t.Errorf("unsubscribing twice: exit %d, stderr %q; want 1 and not found", res.code, res.stderr)
	}
}

func TestStats(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.URL(t)
	pool := openPool(t, url)
	subscribe(t, pool, "order.created", "billing")
	publish(t, pool, "order.created", 7)
	// Two for later: in the inbox, but not yet due.
	for range 2 {
		m := &postbox.Message{Topic: "order.created", Payload: []byte(`{}`), DeliverAt: time.Now().Add(time.Hour)}
		if err := outbox.Publish(ctx, pool, m); err != nil {
			t.Fatal(err)
		}
	}
	send(t, pool, "payments", 3) // no-route dead letters
	pgtest.Drain(t, ctx, pool)
	publish(t, pool, "order.created", 4) // still in the outbox

	var rep statsReport
	runJSON(t, url, &rep, "stats")
	want := []subscriberStats{
		{Subscriber: "billing", Kind: "topic", Ready: 7, Waiting: 2, Delayed: 2},
		{Subscriber: "payments", Kind: "undeclared", Dead: 3},
	}
	if len(rep.Subscribers) != len(want) {
		t.Fatalf("stats: %+v, want %+v", rep.Subscribers, want)
	}
	for i, w := range want {
		got := rep.Subscribers[i]
		if got.Subscriber != w.Subscriber || got.Kind != w.Kind || got.Ready != w.Ready || got.Waiting != w.Waiting || got.Delayed != w.Delayed || got.Dead != w.Dead {
			t.Errorf("stats[%d] = %+v, want %+v", i, got, w)
		}
	}
	if rep.Subscribers[0].OldestPendingSeconds <= 0 {
		t.Errorf("billing's oldest pending age = %v, want > 0", rep.Subscribers[0].OldestPendingSeconds)
	}
	if rep.Outbox.Pending != 4 || rep.Outbox.OldestSeconds <= 0 {
		t.Errorf("outbox = %+v, want 4 waiting with an age", rep.Outbox)
	}
	out := runOK(t, url, "stats")
	for _, s := range []string{"SUBSCRIBER", "IN BACKOFF", "billing", "undeclared", "outbox: 4 pending"} {
		if !strings.Contains(out, s) {
			t.Errorf("stats table lacks %q:\n%s", s, out)
		}
	}
}
