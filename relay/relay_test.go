package relay_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

func TestRelayMovesQueueAndTopicMessages(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)

	if err := dispatcher.DeclareQueue(ctx, pool, "process-order", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: "inventory", Topic: "order.created"}); err != nil {
		t.Fatal(err)
	}
	if err := outbox.Send(ctx, pool, &postbox.Message{Topic: "process-order", Key: "o-1", Payload: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	if err := outbox.Publish(ctx, pool, &postbox.Message{Topic: "order.created", Key: "o-1", Payload: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(pool, relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.Drain(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Claimed != 2 || res.Delivered != 2 {
		t.Fatalf("drain = %+v, want 2 claimed and 2 delivered", res)
	}
}

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()
	if _, err := relay.New(nil, relay.Config{}); err == nil {
		t.Error("New(nil pool) succeeded")
	}
	pool := pgtest.Pool(t, 1)
	for _, cfg := range []relay.Config{
		{BatchSize: -1},
		{BatchSize: 100_001},
		{PollInterval: -time.Millisecond},
		{PollInterval: time.Second, MaxPollInterval: time.Millisecond},
	} {
		if _, err := relay.New(pool, cfg); err == nil {
			t.Errorf("New(%+v) succeeded, want an error naming the field", cfg)
		}
	}
	if _, err := relay.New(pool, relay.Config{BatchSize: 100_000}); err != nil {
		t.Errorf("New with the largest batch: %v", err)
	}
}

// Results and Stats count what batches did; topic messages nobody
// subscribes to are counted and dropped.
func TestDrainCountsAndBatches(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	if err := dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: "a", Topic: "t.#"}); err != nil {
		t.Fatal(err)
	}
	if err := dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: "b", Topic: "t.x"}); err != nil {
		t.Fatal(err)
	}
	msgs := make([]*postbox.Message, 0, 25)
	for i := range 20 {
		msgs = append(msgs, &postbox.Message{Topic: "t.x", Key: fmt.Sprint(i % 3), Payload: []byte(`{}`)})
	}
	for range 5 {
		msgs = append(msgs, &postbox.Message{Topic: "nobody.listens", Payload: []byte(`{}`)})
	}
	if err := outbox.PublishBatch(ctx, pool, msgs); err != nil {
		t.Fatal(err)
	}
	if err := outbox.Send(ctx, pool, &postbox.Message{Topic: "undeclared", Payload: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(pool, relay.Config{BatchSize: 7})
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.Drain(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := relay.Result{Claimed: 26, Delivered: 40, NoRoute: 1, Dropped: 5}
	if res != want {
		t.Errorf("Drain = %+v, want %+v", res, want)
	}
	st := r.Stats()
	if st.Batches != 4 || st.Claimed != 26 || st.Delivered != 40 || st.NoRoute != 1 || st.Dropped != 5 || st.Errors != 0 {
		t.Errorf("Stats = %+v, want 4 batches of at most 7 and the Drain totals", st)
	}
	var outboxRows, inboxRows, dead int
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM postbox.outbox), (SELECT count(*) FROM postbox.inbox),
		(SELECT count(*) FROM postbox.dead_letters WHERE last_error = 'no-route')`).Scan(&outboxRows, &inboxRows, &dead); err != nil {
		t.Fatal(err)
	}
	if outboxRows != 0 || inboxRows != 40 || dead != 1 {
		t.Errorf("outbox %d rows, inbox %d, no-route dead letters %d; want 0, 40 and 1", outboxRows, inboxRows, dead)
	}
	// Nothing left: a further batch claims nothing and counts nothing.
	if res, err := r.RunOnce(ctx); err != nil || res != (relay.Result{}) {
		t.Errorf("RunOnce on an empty outbox = %+v, %v", res, err)
	}
	if r.Stats().Batches != 4 {
		t.Errorf("an empty batch was counted: %+v", r.Stats())
	}
}

// A message ID published twice in one batch is delivered once, and one
// already handled within the dedup window (in postbox.processed) is not
// delivered again. A copy that comes in a later batch, while the first is
// still pending, reaches the stream: the consumer drops it (inbox tests).
func TestDuplicateMessageIDsAreDeliveredOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	if err := dispatcher.DeclareQueue(ctx, pool, "billing", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	twice := postbox.NewID()
	handled := postbox.NewID()
	if _, err := pool.Exec(ctx, `INSERT INTO postbox.processed (subscriber, message_id) VALUES ('billing', $1)`, handled); err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(pool, relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	// Once in one batch, then again in a later batch.
	for _, batch := range [][]uuid.UUID{{twice, twice, handled}, {twice}} {
		for _, id := range batch {
			if err := outbox.Send(ctx, pool, &postbox.Message{ID: id, Topic: "billing", Payload: []byte(`{}`)}); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := r.Drain(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if st := r.Stats(); st.Claimed != 4 || st.Delivered != 2 || st.Duplicates != 2 {
		t.Errorf("Stats = %+v, want 4 claimed, 2 delivered, 2 duplicates", st)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM postbox.inbox WHERE message_id = $1`, twice).Scan(&n); err != nil || n != 2 {
		t.Errorf("inbox rows for the ID published in two batches = %d (%v), want 2", n, err)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM postbox.inbox WHERE message_id = $1`, handled).Scan(&n); err != nil || n != 0 {
		t.Errorf("inbox rows for the already handled ID = %d (%v), want 0", n, err)
	}
}

// DeliverAt in the past does not date a delivery back: it is available now.
func TestPastDeliverAtIsAvailableAtOnce(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	if err := dispatcher.DeclareQueue(ctx, pool, "billing", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	msg := &postbox.Message{Topic: "billing", Payload: []byte(`{}`), DeliverAt: time.Now().Add(-time.Hour)}
	if err := outbox.Send(ctx, pool, msg); err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(pool, relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	var availableAt, now time.Time
	if err := pool.QueryRow(ctx, `SELECT available_at, now() FROM postbox.inbox WHERE message_id = $1`, msg.ID).Scan(&availableAt, &now); err != nil {
		t.Fatal(err)
	}
	if availableAt.After(now) || now.Sub(availableAt) > time.Minute {
		t.Errorf("available_at = %s with now() = %s, want about now, not DeliverAt %s", availableAt, now, msg.DeliverAt)
	}
}

// Run relays until its context ends, then returns nil.
func TestRunRelaysUntilCanceled(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	if err := dispatcher.DeclareQueue(ctx, pool, "billing", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(pool, relay.Config{PollInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()

	for i := range 3 {
		if err := outbox.Send(ctx, pool, &postbox.Message{Topic: "billing", Payload: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for r.Stats().Delivered != int64(i+1) {
			if time.Now().After(deadline) {
				t.Fatalf("message %d not relayed; stats %+v", i, r.Stats())
			}
			time.Sleep(5 * time.Millisecond) // polling a condition
		}
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// BenchmarkRelayDrain measures the relay moving a preloaded backlog of
// 200,000 messages in batches of 1,000, to one queue (SendBatch) or to one
// topic subscriber (PublishBatch). It reports msgs/s; the preload is not
// timed. Run it with
//
//	go test -run '^$' -bench RelayDrain -benchtime 1x ./relay/
func BenchmarkRelayDrain(b *testing.B) {
	for _, bc := range []struct {
		name      string
		batchSize int
		topic     bool
	}{
		{"queue/batch=1000", 1000, false},
		{"topic/batch=1000", 1000, true},
		{"queue/batch=5000", 5000, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			const backlog = 200_000
			ctx := context.Background()
			pool := pgtest.Pool(b, 4)
			if err := dispatcher.DeclareQueue(ctx, pool, "bench", dispatcher.Options{}); err != nil {
				b.Fatal(err)
			}
			if err := dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: "bench-sub", Topic: "bench.event"}); err != nil {
				b.Fatal(err)
			}
			r, err := relay.New(pool, relay.Config{BatchSize: bc.batchSize})
			if err != nil {
				b.Fatal(err)
			}
			var moved time.Duration
			for b.Loop() {
				b.StopTimer()
				preload(b, ctx, pool, backlog, bc.topic)
				b.StartTimer()
				start := time.Now()
				res, err := r.Drain(ctx)
				moved += time.Since(start)
				if err != nil {
					b.Fatal(err)
				}
				if res.Delivered != backlog {
					b.Fatalf("delivered %d, want %d", res.Delivered, backlog)
				}
			}
			b.ReportMetric(float64(backlog*b.N)/moved.Seconds(), "msgs/s")
		})
	}
}

// preload empties the outbox and inbox and writes n messages on 1,000 keys.
func preload(b *testing.B, ctx context.Context, pool *pgxpool.Pool, n int, topic bool) {
	b.Helper()
	if _, err := pool.Exec(ctx, `TRUNCATE postbox.outbox, postbox.inbox`); err != nil {
		b.Fatal(err)
	}
	payload := []byte(`{"orderId":"00000000-0000-0000-0000-000000000000","totalAmount":12345,"currency":"EUR"}`)
	msgs := make([]*postbox.Message, 0, 10_000)
	for i := range n {
		m := &postbox.Message{Topic: "bench", Key: fmt.Sprintf("key-%d", i%1000), Payload: payload}
		if topic {
			m.Topic = "bench.event"
		}
		msgs = append(msgs, m)
		if len(msgs) == cap(msgs) || i == n-1 {
			write := outbox.SendBatch
			if topic {
				write = outbox.PublishBatch
			}
			if err := write(ctx, pool, msgs); err != nil {
				b.Fatal(err)
			}
			msgs = msgs[:0]
		}
	}
	if _, err := pool.Exec(ctx, `VACUUM ANALYZE postbox.outbox, postbox.inbox`); err != nil {
		b.Fatal(err)
	}
}
