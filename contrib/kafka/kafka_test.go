package kafka

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/relay"
)

// Issue 14's acceptance: 10,000 messages over 100 keys go outbox → relay →
// Sink → Kafka → Consumer → handler, once each, each key in its Kafka
// partition and in publish order, in the topic and in the effects.
func TestRelayToKafkaToInboxOnceInKeyOrder(t *testing.T) {
	t.Parallel()
	const (
		messages = 10_000
		keys     = 100
	)
	ctx := testContext(t, 60*time.Second)
	pool := pgtest.Pool(t, 8)
	createEffects(t, ctx, pool)
	seeds := startCluster(t).ListenAddrs()
	ids := publish(t, ctx, pool, messages, keys)

	sink, err := NewSink(SinkConfig{}, kgo.SeedBrokers(seeds...))
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	r, err := relay.New(pool, relay.Config{Sink: sink})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := r.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	relayed := time.Since(start)
	if s := sink.Stats(); s.Records != messages || s.Failed != 0 {
		t.Errorf("sink stats %+v, want %d records and no failure", s, messages)
	}
	if log := readTopic(t, ctx, seeds, ids); log != (topicLog{records: messages}) {
		t.Errorf("topic: %+v, want %d records, no copies, all in their key's partition, in order", log, messages)
	}

	c := newConsumer(t, pool, seeds, ConsumerConfig{Concurrency: testPartitions})
	start = time.Now()
	stop := runConsumer(t, c)
	waitFor(t, ctx, 45*time.Second, "every effect", func() bool {
		return count(t, ctx, pool, `SELECT count(*) FROM effects`) >= messages
	})
	stop()
	t.Logf("%d messages: relayed to Kafka in %s, handled in %s; consumer stats %+v",
		messages, relayed.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), c.Stats())
	checkEffects(t, ctx, pool, ids)
	if s := c.Stats(); s.Handled != messages || s.Skipped != 0 {
		t.Errorf("consumer stats %+v, want %d handled", s, messages)
	}
}

// Broker failures while the relay produces: connections dropped before a
// produce request is read (ControlKey), requests answered "timed out"
// after the records were appended, and a partition refusing records
// (not enough replicas) until the producer gives them up, failing the
// batch. The
// idempotent producer stores nothing twice on its own retries, no key is
// stored out of order, the relay re-sends the failed batches, and the
// consuming side applies every effect once, in order.
func TestBrokerFailuresKeepOrderAndLoseNothing(t *testing.T) {
	t.Parallel()
	const (
		messages = 10_000
		keys     = 100
	)
	ctx := testContext(t, 60*time.Second)
	pool := pgtest.Pool(t, 8)
	createEffects(t, ctx, pool)
	cluster := startCluster(t)
	seeds := cluster.ListenAddrs()
	ids := publish(t, ctx, pool, messages, keys)

	var produces, dropped atomic.Int64
	cluster.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		if n := produces.Add(1); n%5 == 2 && dropped.Load() < 6 {
			dropped.Add(1)
			return nil, errors.New("injected: connection dropped"), true
		}
		return nil, nil, false
	})
	timedOut := cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: testTopic, Partitions: []int32{1},
		Err: kerr.RequestTimedOut, Count: 3})
	refused := cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: testTopic, Partitions: []int32{5},
		Err: kerr.NotEnoughReplicas, Count: 8})

	// Few retries, quick ones: the producer gives up on partition 5 while
	// its fault lasts. (franz-go refreshes metadata before retrying, at
	// most every MetadataMinAge.)
	sink, err := NewSink(SinkConfig{}, kgo.SeedBrokers(seeds...), kgo.RecordRetries(3),
		kgo.RetryBackoffFn(func(int) time.Duration { return 5 * time.Millisecond }), kgo.MetadataMinAge(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	r, err := relay.New(pool, relay.Config{Sink: sink})
	if err != nil {
		t.Fatal(err)
	}
	for {
		bctx, cancel := context.WithTimeout(ctx, 10*time.Second) // as relay.Config.SinkTimeout would
		res, err := r.RunOnce(bctx)
		cancel()
		if ctx.Err() != nil {
			t.Fatalf("relay: %v", err)
		}
		if err == nil && res.Claimed == 0 {
			break
		}
	}
	s := sink.Stats()
	t.Logf("sink %+v; relay %+v; %d connections dropped, %d produce requests timed out after appending, %d refused for want of replicas",
		s, r.Stats(), dropped.Load(), timedOut.Hits(), refused.Hits())
	if dropped.Load() == 0 || timedOut.Hits() == 0 || refused.Hits() == 0 {
		t.Error("not every injected failure happened")
	}
	if s.Failed == 0 {
		t.Error("no batch failed: the relay never had to re-send")
	}
	log := readTopic(t, ctx, seeds, ids)
	t.Logf("topic: %+v", log)
	if log.misplaced != 0 || log.outOfOrder != 0 || log.records != messages+log.copies {
		t.Errorf("topic: %+v, want every key in its partition and in order", log)
	}
	if log.copies > int(s.Records)-messages {
		t.Errorf("%d copies in the topic, more than the %d re-sent records", log.copies, int(s.Records)-messages)
	}

	c := newConsumer(t, pool, seeds, ConsumerConfig{Concurrency: testPartitions})
	stop := runConsumer(t, c)
	waitFor(t, ctx, 45*time.Second, "every effect", func() bool {
		return c.Stats().Handled+c.Stats().Duplicates >= int64(log.records)
	})
	stop()
	checkEffects(t, ctx, pool, ids)
	if cs := c.Stats(); cs.Handled != messages || cs.Duplicates != int64(log.copies) {
		t.Errorf("consumer stats %+v, want %d handled and %d duplicates", cs, messages, log.copies)
	}
}

// A batch the relay re-sends (here: the sink's first two batches are
// reported failed after Kafka stored them, as when the relay's commit
// fails) is stored twice in Kafka, and the consuming side applies each
// effect once. A second Consumer of the group, started after the first
// stopped part way, resumes from the committed offsets.
func TestResentBatchHasNoDuplicateEffect(t *testing.T) {
	t.Parallel()
	const (
		messages = 4000
		batch    = 500
	)
	ctx := testContext(t, 60*time.Second)
	pool := pgtest.Pool(t, 8)
	createEffects(t, ctx, pool)
	seeds := startCluster(t).ListenAddrs()
	ids := publish(t, ctx, pool, messages, 20)

	sink, err := NewSink(SinkConfig{}, kgo.SeedBrokers(seeds...))
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	var calls, resent atomic.Int64 // resent: messages of the batches "lost"
	lossy := dispatcher.SinkFunc(func(ctx context.Context, b []dispatcher.Envelope) error {
		if err := sink.Deliver(ctx, b); err != nil {
			return err
		}
		if calls.Add(1) <= 2 {
			resent.Add(int64(len(b)))
			return errors.New("commit lost")
		}
		return nil
	})
	r, err := relay.New(pool, relay.Config{Sink: lossy, BatchSize: batch})
	if err != nil {
		t.Fatal(err)
	}
	for {
		res, err := r.RunOnce(ctx)
		if err != nil && !strings.Contains(err.Error(), "commit lost") {
			t.Fatal(err)
		}
		if err == nil && res.Claimed == 0 {
			break
		}
	}
	log := readTopic(t, ctx, seeds, ids)
	if log.copies != int(resent.Load()) || resent.Load() == 0 || log.outOfOrder != 0 || log.misplaced != 0 {
		t.Errorf("topic: %+v, want %d copies, every key in order in its partition", log, resent.Load())
	}

	first := newConsumer(t, pool, seeds, ConsumerConfig{})
	stop := runConsumer(t, first)
	waitFor(t, ctx, 30*time.Second, "some effects", func() bool {
		return count(t, ctx, pool, `SELECT count(*) FROM effects`) >= messages/3
	})
	stop()
	second := newConsumer(t, pool, seeds, ConsumerConfig{})
	stop = runConsumer(t, second)
	waitFor(t, ctx, 30*time.Second, "every effect", func() bool {
		return count(t, ctx, pool, `SELECT count(*) FROM effects`) >= messages
	})
	// Wait until the second has also read the copies, which come last.
	waitFor(t, ctx, 30*time.Second, "every record read", func() bool {
		a, b := first.Stats(), second.Stats()
		return a.Handled+a.Duplicates+b.Handled+b.Duplicates >= int64(log.records)
	})
	stop()
	t.Logf("first consumer %+v, second %+v", first.Stats(), second.Stats())
	checkEffects(t, ctx, pool, ids)
	a, b := first.Stats(), second.Stats()
	if a.Handled+b.Handled != messages || a.Duplicates+b.Duplicates < int64(log.copies) {
		t.Errorf("consumers handled %d and dropped %d, want %d handled and at least %d dropped",
			a.Handled+b.Handled, a.Duplicates+b.Duplicates, messages, log.copies)
	}
}

// A failing handler holds its partition and is retried in place; a
// permanent error skips its record.
func TestFailingHandlerIsRetriedInPlace(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 30*time.Second)
	pool := pgtest.Pool(t, 4)
	createEffects(t, ctx, pool)
	seeds := startCluster(t).ListenAddrs()
	ids := publish(t, ctx, pool, 200, 4)
	sink, err := NewSink(SinkConfig{}, kgo.SeedBrokers(seeds...))
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	r, err := relay.New(pool, relay.Config{Sink: sink})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	var hopeless atomic.Value
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		switch {
		case d.Key == "key-1" && strings.HasSuffix(string(d.Payload), `"n":7}`):
			hopeless.Store(d.ID)
			return postbox.Permanent(errors.New("cannot ever handle this"))
		case strings.HasSuffix(string(d.Payload), `"n":3}`) && d.Attempt < 3:
			return errors.New("not yet")
		}
		return effectHandler(ctx, tx, d)
	})
	c := newConsumer(t, pool, seeds, ConsumerConfig{
		Handler: h,
		Backoff: dispatcher.Backoff{Initial: 10 * time.Millisecond, Max: 20 * time.Millisecond, Multiplier: 2},
	})
	stop := runConsumer(t, c)
	waitFor(t, ctx, 20*time.Second, "every record", func() bool {
		s := c.Stats()
		return s.Handled+s.Skipped >= 200
	})
	stop()
	s := c.Stats()
	if s.Handled != 199 || s.Skipped != 1 || s.Retried != 8 {
		t.Errorf("consumer stats %+v, want 199 handled, 1 skipped, 8 retried (2 for each key's message 3)", s)
	}
	delete(ids, hopeless.Load().(uuid.UUID))
	checkEffects(t, ctx, pool, ids)
}

func TestConfigErrors(t *testing.T) {
	t.Parallel()
	seeds := startCluster(t).ListenAddrs()
	if _, err := NewSink(SinkConfig{}, kgo.SeedBrokers(seeds...), kgo.DisableIdempotentWrite()); err == nil ||
		!strings.Contains(err.Error(), "idempotent") {
		t.Errorf("NewSink without idempotence = %v", err)
	}
	if _, err := NewSink(SinkConfig{Timeout: -1}); err == nil || !strings.Contains(err.Error(), "SinkConfig.Timeout") {
		t.Errorf("NewSink(Timeout -1) = %v", err)
	}
	pool := pgtest.Pool(t, 1)
	if _, err := NewConsumer(pool, ConsumerConfig{Subscriber: "s", Handler: effectHandler}, kgo.SeedBrokers(seeds...)); err == nil ||
		!strings.Contains(err.Error(), "group") {
		t.Errorf("NewConsumer without a group = %v", err)
	}
	for _, tc := range []struct {
		cfg  ConsumerConfig
		want string
	}{
		{ConsumerConfig{Handler: effectHandler}, "ConsumerConfig.Subscriber"},
		{ConsumerConfig{Subscriber: "s"}, "ConsumerConfig.Handler"},
		{ConsumerConfig{Subscriber: "s", Handler: effectHandler, MaxAttempts: -1}, "ConsumerConfig.MaxAttempts"},
		{ConsumerConfig{Subscriber: "s", Handler: effectHandler, Backoff: dispatcher.Backoff{Multiplier: 0.5}}, "ConsumerConfig.Backoff.Multiplier"},
	} {
		if _, err := tc.cfg.withDefaults(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err = %v, want one naming %s", tc.cfg, err, tc.want)
		}
	}
}
