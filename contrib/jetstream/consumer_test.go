package jetstream

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/relay"
)

// Failing handlers are retried by redelivery, and a key's later messages
// wait for its failed one, so effects stay in order per key; a permanent
// error terminates its message, whose key then carries on without it.
func TestFailedMessagesAreRedeliveredInKeyOrder(t *testing.T) {
	t.Parallel()
	const (
		messages = 600
		keys     = 6
	)
	ctx := testContext(t, 3*time.Minute)
	pool := pgtest.Pool(t, 8)
	createEffects(t, ctx, pool)
	_, js := connect(t, startServer(t))
	st := createStream(t, ctx, js, time.Minute)
	ids := publish(t, ctx, pool, messages, keys)
	sink, err := NewSink(js, SinkConfig{Subject: st.subject})
	if err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(pool, relay.Config{Sink: sink})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Drain(ctx); err != nil {
		t.Fatal(err)
	}

	// Every 13th message of each key fails its first two attempts; the
	// 50th message of key-2 is hopeless.
	var hopeless uuid.UUID
	h := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		var o order
		if err := json.Unmarshal(d.Payload, &o); err != nil {
			return postbox.Permanent(err)
		}
		if o.Key == "key-2" && o.N == 50 {
			hopeless = d.ID
			return postbox.Permanent(errors.New("cannot ever handle this"))
		}
		if o.N%13 == 0 && d.Attempt <= 2 {
			return errors.New("not yet")
		}
		return effectHandler(ctx, tx, d)
	})
	c, err := NewConsumer(pool, createConsumer(t, ctx, js, st), ConsumerConfig{
		Subscriber: "inventory", Handler: h,
		Backoff: dispatcher.Backoff{Initial: 20 * time.Millisecond, Max: 50 * time.Millisecond, Multiplier: 2},
	})
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	waitFor(t, ctx, 2*time.Minute, "every effect but the hopeless one", func() bool {
		return count(t, ctx, pool, `SELECT count(*) FROM effects`) >= messages-1
	})
	stop()
	delete(ids, hopeless)
	checkEffects(t, ctx, pool, ids)
	failing := (messages/keys/13 + 1) * keys // n = 0, 13, 26, ... of each key
	s := c.Stats()
	t.Logf("consumer stats %+v", s)
	if s.Handled != messages-1 || s.Terminated != 1 || s.Retried != int64(2*failing) {
		t.Errorf("consumer stats %+v, want %d handled, 1 terminated, %d retried", s, messages-1, 2*failing)
	}
	if n := count(t, ctx, pool, `SELECT count(*) FROM effects WHERE attempt = 3`); n != failing {
		t.Errorf("%d effects on a third attempt, want %d", n, failing)
	}
}

// A message redelivered after it was handled (its ack was lost, or a
// second stream copy past the duplicate window) is acknowledged without
// running the handler again.
func TestRedeliveredHandledMessageIsADuplicate(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 30*time.Second)
	pool := pgtest.Pool(t, 4)
	createEffects(t, ctx, pool)
	_, js := connect(t, startServer(t))
	st := createStream(t, ctx, js, time.Millisecond*100) // a tiny window: re-sends are stored again
	e := dispatcher.Envelope{Message: postbox.Message{ID: postbox.NewID(), Topic: "t", Key: "k", Payload: []byte(`{"key":"k","n":0}`)}}
	sink, err := NewSink(js, SinkConfig{Subject: st.subject})
	if err != nil {
		t.Fatal(err)
	}
	if err := sink.Deliver(ctx, []dispatcher.Envelope{e}); err != nil {
		t.Fatal(err)
	}
	c, err := NewConsumer(pool, createConsumer(t, ctx, js, st), ConsumerConfig{Subscriber: "inventory", Handler: effectHandler})
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	defer stop()
	waitFor(t, ctx, 10*time.Second, "the first copy handled", func() bool { return c.Stats().Handled == 1 })
	// Past the window, the same message is stored a second time.
	waitFor(t, ctx, 10*time.Second, "a second copy in the stream", func() bool {
		if err := sink.Deliver(ctx, []dispatcher.Envelope{e}); err != nil {
			t.Fatal(err)
		}
		return st.msgs(t, ctx) == 2
	})
	waitFor(t, ctx, 10*time.Second, "the second copy dropped", func() bool { return c.Stats().Duplicates == 1 })
	if n := count(t, ctx, pool, `SELECT count(*) FROM effects`); n != 1 {
		t.Errorf("%d effects, want 1", n)
	}
}

func TestConsumerNeedsExplicitAcks(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 30*time.Second)
	pool := pgtest.Pool(t, 2)
	_, js := connect(t, startServer(t))
	st := createStream(t, ctx, js, time.Minute)
	cons, err := js.CreateOrUpdateConsumer(ctx, st.name, natsjs.ConsumerConfig{Durable: "fire-and-forget", AckPolicy: natsjs.AckNonePolicy})
	if err != nil {
		t.Fatal(err)
	}
	_, err = NewConsumer(pool, cons, ConsumerConfig{Subscriber: "s", Handler: effectHandler})
	if err == nil || !strings.Contains(err.Error(), "AckExplicitPolicy") {
		t.Errorf("NewConsumer on an AckNone consumer = %v, want an error asking for AckExplicitPolicy", err)
	}
}

// A Consumer stopped part way handles what it had fetched before Run
// returns, so a second Consumer on the same JetStream consumer carries on
// at once (nothing waits for AckWait) with every key in order.
func TestRestartedConsumerCarriesOnInOrder(t *testing.T) {
	t.Parallel()
	const (
		// Few enough that the second consumer's share (600) is handled
		// well within AckWait even under CI's -race load: a message given
		// back instead of handled would wait for AckWait and fail the test.
		messages = 900
		keys     = 30
	)
	ctx := testContext(t, 3*time.Minute)
	pool := pgtest.Pool(t, 8)
	createEffects(t, ctx, pool)
	_, js := connect(t, startServer(t))
	st := createStream(t, ctx, js, time.Minute)
	ids := publish(t, ctx, pool, messages, keys)
	sink, err := NewSink(js, SinkConfig{Subject: st.subject})
	if err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(pool, relay.Config{Sink: sink})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	cons := createConsumer(t, ctx, js, st)
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first, err := NewConsumer(pool, cons, ConsumerConfig{Subscriber: "inventory", Handler: effectHandler})
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, first)
	waitFor(t, ctx, 2*time.Minute, "a third of the effects", func() bool {
		return count(t, ctx, pool, `SELECT count(*) FROM effects`) >= messages/3
	})
	stop()
	second, err := NewConsumer(pool, cons, ConsumerConfig{Subscriber: "inventory", Handler: effectHandler})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	stop = runConsumer(t, second)
	waitFor(t, ctx, info.Config.AckWait/2, "the rest of the effects, well within AckWait", func() bool {
		return count(t, ctx, pool, `SELECT count(*) FROM effects`) >= messages
	})
	stop()
	t.Logf("first consumer %+v; second %+v, done in %s", first.Stats(), second.Stats(), time.Since(start).Round(time.Millisecond))
	checkEffects(t, ctx, pool, ids)
}
