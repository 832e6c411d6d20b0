package kafka

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/outbox"
)

const (
	testTopic      = "orders.created"
	testPartitions = 8
)

// testContext ends with the test, or after limit as a backstop.
func testContext(t *testing.T, limit time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), limit)
	t.Cleanup(cancel)
	return ctx
}

// startCluster runs a fake Kafka cluster (kfake) in this process, with
// testTopic of testPartitions partitions. It is closed when t ends.
func startCluster(t testing.TB) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(testPartitions, testTopic))
	if err != nil {
		t.Fatalf("kfake: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// order is the payload of test messages: the n-th message (from 0) of its
// key.
type order struct {
	Key string `json:"key"`
	N   int    `json:"n"`
}

// publish writes n messages over keys keys to the outbox, topic testTopic,
// the i-th with key i%keys, and returns their IDs.
func publish(t testing.TB, ctx context.Context, pool *pgxpool.Pool, n, keys int) map[uuid.UUID]bool {
	t.Helper()
	ids := make(map[uuid.UUID]bool, n)
	chunk := make([]*postbox.Message, 0, 2000)
	for i := range n {
		o := order{Key: fmt.Sprintf("key-%d", i%keys), N: i / keys}
		payload, err := json.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		chunk = append(chunk, &postbox.Message{Topic: testTopic, Type: "order.created.v1", Key: o.Key, Payload: payload,
			Headers: map[string]string{postbox.HeaderCorrelationID: fmt.Sprintf("corr-%d", i)}})
		if len(chunk) == cap(chunk) || i == n-1 {
			if err := outbox.PublishBatch(ctx, pool, chunk); err != nil {
				t.Fatal(err)
			}
			for _, m := range chunk {
				ids[m.ID] = true
			}
			chunk = chunk[:0]
		}
	}
	return ids
}

// createEffects creates the table the test handler writes to: one row per
// handled message, in handling order.
func createEffects(t testing.TB, ctx context.Context, pool *pgxpool.Pool) {
	t.Helper()
	if _, err := pool.Exec(ctx, `CREATE TABLE effects (
		seq bigserial PRIMARY KEY,
		message_id uuid NOT NULL,
		key text NOT NULL,
		n int NOT NULL,
		attempt int NOT NULL)`); err != nil {
		t.Fatal(err)
	}
}

// effectHandler writes one effect row through the handler's transaction.
var effectHandler = inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	var o order
	if err := json.Unmarshal(d.Payload, &o); err != nil {
		return postbox.Permanent(err)
	}
	_, err := tx.Exec(ctx, `INSERT INTO effects (message_id, key, n, attempt) VALUES ($1, $2, $3, $4)`, d.ID, d.Key, o.N, d.Attempt)
	return err
})

func count(t testing.TB, ctx context.Context, pool *pgxpool.Pool, sql string) int {
	t.Helper()
	var n int64
	if err := pool.QueryRow(ctx, sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return int(n)
}

// checkEffects checks that every message in ids had its effect exactly
// once, and that each key's effects are in publish order.
func checkEffects(t testing.TB, ctx context.Context, pool *pgxpool.Pool, ids map[uuid.UUID]bool) {
	t.Helper()
	rows, err := pool.Query(ctx, `SELECT message_id, key, n FROM effects ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	seen := make(map[uuid.UUID]bool, len(ids))
	last := map[string]int{}
	for rows.Next() {
		var (
			id  uuid.UUID
			key string
			n   int
		)
		if err := rows.Scan(&id, &key, &n); err != nil {
			t.Fatal(err)
		}
		switch {
		case seen[id]:
			t.Errorf("message %s handled twice", id)
		case !ids[id]:
			t.Errorf("message %s handled but never published", id)
		case n <= last[key]-1:
			t.Errorf("key %s: handled message %d after message %d", key, n, last[key]-1)
		}
		seen[id] = true
		last[key] = n + 1
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(seen) != len(ids) {
		t.Errorf("%d distinct messages handled, want %d", len(seen), len(ids))
	}
}

// topicLog is what testTopic holds.
type topicLog struct {
	records    int // in all, copies included
	copies     int // records of a message ID stored before
	misplaced  int // records not in the partition Kafka's default partitioner picks
	outOfOrder int // first records of a message stored before an earlier message of its key
}

// readTopic reads testTopic from the start to its end and checks every
// published message is in it, in the partition of its key and, counting
// each message's first record, in publish order per key.
func readTopic(t testing.TB, ctx context.Context, seeds []string, ids map[uuid.UUID]bool) topicLog {
	t.Helper()
	end := endOffsets(t, ctx, seeds)
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ConsumeTopics(testTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var (
		log  topicLog
		seen = make(map[uuid.UUID]bool, len(ids))
		next = map[string]int{}
		left = 0
	)
	for _, e := range end {
		left += int(e)
	}
	for left > 0 {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read %s: %d records still to read: %v", testTopic, left, ctx.Err())
		}
		fetches.EachError(func(_ string, _ int32, err error) { t.Fatalf("fetch: %v", err) })
		fetches.EachRecord(func(r *kgo.Record) {
			if r.Offset >= end[r.Partition] {
				return
			}
			left--
			log.records++
			m, err := decode(r)
			if err != nil {
				t.Fatalf("record %d/%d: %v", r.Partition, r.Offset, err)
			}
			var o order
			if err := json.Unmarshal(m.Payload, &o); err != nil {
				t.Fatal(err)
			}
			if m.Key != o.Key || m.Topic != testTopic || m.Type != "order.created.v1" || m.CreatedAt.IsZero() ||
				m.Headers[postbox.HeaderCorrelationID] == "" || !ids[m.ID] {
				t.Errorf("record %d/%d arrived as %+v", r.Partition, r.Offset, m)
			}
			if int(r.Partition) != dispatcher.Partition(m.Key, testPartitions) {
				log.misplaced++
			}
			if seen[m.ID] {
				log.copies++
				return
			}
			seen[m.ID] = true
			if o.N != next[o.Key] {
				log.outOfOrder++
			}
			next[o.Key] = o.N + 1
		})
	}
	if len(seen) != len(ids) {
		t.Errorf("%d distinct messages in %s, want %d", len(seen), testTopic, len(ids))
	}
	return log
}

// endOffsets returns the high watermark of each partition of testTopic.
func endOffsets(t testing.TB, ctx context.Context, seeds []string) map[int32]int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrListOffsetsRequest()
	rt := kmsg.NewListOffsetsRequestTopic()
	rt.Topic = testTopic
	for p := range int32(testPartitions) {
		rp := kmsg.NewListOffsetsRequestTopicPartition()
		rp.Partition = p
		rp.Timestamp = -1 // the end
		rt.Partitions = append(rt.Partitions, rp)
	}
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[int32]int64)
	for _, rt := range resp.Topics {
		for _, p := range rt.Partitions {
			if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
				t.Fatalf("list offsets %d: %v", p.Partition, err)
			}
			out[p.Partition] = p.Offset
		}
	}
	return out
}

// newConsumer returns a Consumer of testTopic in group "inventory".
func newConsumer(t testing.TB, pool *pgxpool.Pool, seeds []string, cfg ConsumerConfig) *Consumer {
	t.Helper()
	if cfg.Subscriber == "" {
		cfg.Subscriber = "inventory"
	}
	if cfg.Handler == nil {
		cfg.Handler = effectHandler
	}
	c, err := NewConsumer(pool, cfg, kgo.SeedBrokers(seeds...), kgo.ConsumerGroup("inventory"),
		kgo.ConsumeTopics(testTopic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// runConsumer runs c until the returned stop is called.
func runConsumer(t testing.TB, c *Consumer) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Consumer.Run = %v, want nil", err)
		}
	}
}

// waitFor polls cond until it holds, and fails the test when it still
// does not after limit.
func waitFor(t testing.TB, ctx context.Context, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("still waiting after %s for %s", limit, what)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-tick.C:
		}
	}
}
