package jetstream

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/relay"
)

// Issue 14's acceptance on an embedded server: 10,000 messages over 100
// keys go outbox → relay → Sink → stream → Consumer → handler, and arrive
// once each, in order per key, both in the stream and in the effects.
func TestRelayToStreamToInboxOnceInKeyOrder(t *testing.T) {
	t.Parallel()
	endToEnd(t, startServer(t), 10_000, 100)
}

// The same, smaller, against the machine's NATS server (2.9), which keeps
// the package to what older servers have.
func TestRelayToStreamToInboxOnLocalServer(t *testing.T) {
	t.Parallel()
	endToEnd(t, localServer(t), 3000, 30)
}

func endToEnd(t *testing.T, url string, messages, keys int) {
	ctx := testContext(t, 3*time.Minute)
	pool := pgtest.Pool(t, 8)
	createEffects(t, ctx, pool)
	_, js := connect(t, url)
	st := createStream(t, ctx, js, 2*time.Minute)
	ids := publish(t, ctx, pool, messages, keys)

	sink, err := NewSink(js, SinkConfig{Subject: st.subject, Stream: st.name})
	if err != nil {
		t.Fatal(err)
	}
	r, err := relay.New(pool, relay.Config{Sink: sink})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	res, err := r.Drain(ctx)
	if err != nil {
		t.Fatal(err)
	}
	relayed := time.Since(start)
	if res.Claimed != messages {
		t.Errorf("relay claimed %d, want %d", res.Claimed, messages)
	}
	if s := sink.Stats(); s.Published != int64(messages) || s.Duplicates != 0 || s.Failed != 0 {
		t.Errorf("sink stats %+v, want %d published and nothing else", s, messages)
	}
	checkStream(t, ctx, js, st, ids)

	c, err := NewConsumer(pool, createConsumer(t, ctx, js, st), ConsumerConfig{Subscriber: "inventory", Handler: effectHandler, Concurrency: 8})
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	stop := runConsumer(t, c)
	waitFor(t, ctx, 2*time.Minute, "every effect", func() bool {
		return count(t, ctx, pool, `SELECT count(*) FROM effects`) >= messages
	})
	stop()
	t.Logf("%d messages: relayed to the stream in %s, handled in %s; consumer stats %+v",
		messages, relayed.Round(time.Millisecond), time.Since(start).Round(time.Millisecond), c.Stats())
	checkEffects(t, ctx, pool, ids)
	if s := c.Stats(); s.Handled != int64(messages) || s.Terminated != 0 {
		t.Errorf("consumer stats %+v, want %d handled and none terminated", s, messages)
	}
}

// A relay that re-sends batches (here: the sink's first two batches are
// reported failed after they were published, as when the relay's commit
// fails) stores nothing twice: the stream drops the re-sends by
// Nats-Msg-Id and the Sink counts them as duplicates.
func TestResentBatchIsDroppedByTheDuplicateWindow(t *testing.T) {
	t.Parallel()
	const (
		messages = 2000
		batch    = 500
	)
	ctx := testContext(t, 3*time.Minute)
	pool := pgtest.Pool(t, 8)
	createEffects(t, ctx, pool)
	_, js := connect(t, startServer(t))
	st := createStream(t, ctx, js, time.Minute)
	ids := publish(t, ctx, pool, messages, 10)

	sink, err := NewSink(js, SinkConfig{Subject: st.subject})
	if err != nil {
		t.Fatal(err)
	}
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
	s := sink.Stats()
	if s.Published != messages || s.Duplicates != resent.Load() || resent.Load() == 0 {
		t.Errorf("sink stats %+v, want %d published and %d duplicates", s, messages, resent.Load())
	}
	checkStream(t, ctx, js, st, ids)

	c, err := NewConsumer(pool, createConsumer(t, ctx, js, st), ConsumerConfig{Subscriber: "inventory", Handler: effectHandler, Concurrency: 8})
	if err != nil {
		t.Fatal(err)
	}
	stop := runConsumer(t, c)
	waitFor(t, ctx, 2*time.Minute, "every effect", func() bool {
		return count(t, ctx, pool, `SELECT count(*) FROM effects`) >= messages
	})
	stop()
	checkEffects(t, ctx, pool, ids)
}

// When the stream refuses one message, no later message of its key is
// stored (at most one publish per key is ever unacknowledged), other keys
// carry on, and Deliver fails. Once the cause is fixed, the re-sent batch
// completes the key in order and the rest are duplicates.
func TestFailedPublishHoldsBackItsKey(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 30*time.Second)
	_, js := connect(t, startServer(t))
	st := createStream(t, ctx, js, time.Minute)
	cfg, err := st.stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	limited := cfg.Config
	limited.MaxMsgSize = 1024
	if _, err := js.UpdateStream(ctx, limited); err != nil {
		t.Fatal(err)
	}

	// Keys a, b, c with 20 messages each, interleaved; the 5th message of
	// key b is too big for the stream.
	var batch []dispatcher.Envelope
	for i := range 60 {
		key := string(rune('a' + i%3))
		payload := fmt.Appendf(nil, `{"key":%q,"n":%d}`, key, i/3)
		if key == "b" && i/3 == 4 {
			payload = []byte(strings.Repeat("x", 2048))
		}
		batch = append(batch, dispatcher.Envelope{Message: postbox.Message{
			ID: postbox.NewID(), Topic: "t", Key: key, Payload: payload, CreatedAt: time.Now()}})
	}
	sink, err := NewSink(js, SinkConfig{Subject: st.subject, MaxInFlight: 8})
	if err != nil {
		t.Fatal(err)
	}
	err = sink.Deliver(ctx, batch)
	if err == nil || !strings.Contains(err.Error(), batch[13].ID.String()) {
		t.Fatalf("Deliver = %v, want the failure of message %s", err, batch[13].ID)
	}
	stored := streamKeys(t, ctx, js, st)
	if got := stored["b"]; len(got) != 4 {
		t.Errorf("key b: %d messages stored before its failed one, want exactly the 4 before it", len(got))
	}
	t.Logf("after the failure: a=%d b=%d c=%d stored; stats %+v", len(stored["a"]), len(stored["b"]), len(stored["c"]), sink.Stats())

	limited.MaxMsgSize = -1
	if _, err := js.UpdateStream(ctx, limited); err != nil {
		t.Fatal(err)
	}
	before := sink.Stats()
	if err := sink.Deliver(ctx, batch); err != nil {
		t.Fatal(err)
	}
	after := sink.Stats()
	if stored := after.Published + after.Duplicates - before.Published - before.Duplicates; stored != 60 {
		t.Errorf("re-send acknowledged %d messages, want 60", stored)
	}
	if after.Published != 60 {
		t.Errorf("%d messages stored in all, want 60", after.Published)
	}
	for key, ids := range streamKeys(t, ctx, js, st) {
		var want []uuid.UUID
		for _, e := range batch {
			if e.Key == key {
				want = append(want, e.ID)
			}
		}
		if fmt.Sprint(ids) != fmt.Sprint(want) {
			t.Errorf("key %s: stream order %v, want %v", key, ids, want)
		}
	}
}

// streamKeys reads s and returns each key's message IDs in stream order.
func streamKeys(t *testing.T, ctx context.Context, js natsjs.JetStream, s *testStream) map[string][]uuid.UUID {
	t.Helper()
	it := readStream(t, ctx, js, s)
	out := map[string][]uuid.UUID{}
	for range s.msgs(t, ctx) {
		msg, err := it.Next(natsjs.NextMaxWait(10 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		m, err := decode(msg.Subject(), msg.Headers(), msg.Data())
		if err != nil {
			t.Fatal(err)
		}
		out[m.Key] = append(out[m.Key], m.ID)
	}
	return out
}

// A Deliver that cannot get its PubAcks in time returns the context's
// error rather than waiting: here no stream captures the subject.
func TestDeliverRespectsItsDeadline(t *testing.T) {
	t.Parallel()
	ctx := testContext(t, 30*time.Second)
	_, js := connect(t, startServer(t))
	sink, err := NewSink(js, SinkConfig{Subject: func(*dispatcher.Envelope) string { return "nowhere.at.all" }})
	if err != nil {
		t.Fatal(err)
	}
	batch := []dispatcher.Envelope{{Message: postbox.Message{ID: postbox.NewID(), Topic: "t"}}}
	dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = sink.Deliver(dctx, batch)
	if err == nil {
		t.Fatal("Deliver to a subject no stream captures succeeded")
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("Deliver took %s with a 100ms deadline", took)
	}
	if s := sink.Stats(); s.Failed != 1 || s.Published != 0 {
		t.Errorf("stats %+v, want one failed batch", s)
	}
}

func TestConfigErrorsNameTheField(t *testing.T) {
	t.Parallel()
	_, js := connect(t, startServer(t))
	if _, err := NewSink(js, SinkConfig{MaxInFlight: -1}); err == nil || !strings.Contains(err.Error(), "SinkConfig.MaxInFlight") {
		t.Errorf("NewSink(MaxInFlight -1) = %v", err)
	}
	if _, err := NewSink(nil, SinkConfig{}); err == nil {
		t.Error("NewSink(nil) succeeded")
	}
	for _, tc := range []struct {
		cfg  ConsumerConfig
		want string
	}{
		{ConsumerConfig{Handler: effectHandler}, "ConsumerConfig.Subscriber"},
		{ConsumerConfig{Subscriber: "s"}, "ConsumerConfig.Handler"},
		{ConsumerConfig{Subscriber: "s", Handler: effectHandler, Concurrency: -1}, "ConsumerConfig.Concurrency"},
		{ConsumerConfig{Subscriber: "s", Handler: effectHandler, Backoff: dispatcher.Backoff{Initial: time.Second, Max: time.Millisecond}}, "ConsumerConfig.Backoff"},
	} {
		if _, err := tc.cfg.withDefaults(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err = %v, want one naming %s", tc.cfg, err, tc.want)
		}
	}
}

func TestDefaultSubjectSeparatesTopicsFromQueues(t *testing.T) {
	t.Parallel()
	topic := DefaultSubject(&dispatcher.Envelope{Message: postbox.Message{Topic: "queue.x"}})
	queue := DefaultSubject(&dispatcher.Envelope{Message: postbox.Message{Topic: "x"}, Queue: true})
	if topic != "postbox.topic.queue.x" || queue != "postbox.queue.x" {
		t.Errorf("subjects %q and %q", topic, queue)
	}
}

func TestHeadersRoundTrip(t *testing.T) {
	t.Parallel()
	e := dispatcher.Envelope{Message: postbox.Message{
		ID: postbox.NewID(), Topic: "orders.created", Type: "order.created.v1", Key: "k-1",
		Payload: []byte(`{}`), CreatedAt: time.Date(2026, 12, 1, 10, 0, 0, 123456789, time.FixedZone("x", 3600)),
		Headers: map[string]string{"correlation-id": "c-1", "Nats-Expected-Last-Sequence": "7", "postbox-key": "forged"},
	}}
	msg := natsMsg("s", "STREAM", &e)
	if msg.Header.Get("Nats-Expected-Last-Sequence") != "" {
		t.Error("a Nats-* message header was carried")
	}
	if msg.Header.Get(expectedStreamHeader) != "STREAM" || msg.Header.Get(natsjs.MsgIDHeader) != e.ID.String() {
		t.Errorf("headers %v", msg.Header)
	}
	m, err := decode(msg.Subject, msg.Header, msg.Data)
	if err != nil {
		t.Fatal(err)
	}
	if m.ID != e.ID || m.Topic != e.Topic || m.Type != e.Type || m.Key != "k-1" || !m.CreatedAt.Equal(e.CreatedAt) ||
		len(m.Headers) != 1 || m.Headers["correlation-id"] != "c-1" {
		t.Errorf("decoded %+v from %+v", m, e.Message)
	}
	if _, err := decode("s", nil, nil); !errors.Is(err, errNoID) {
		t.Errorf("decode without an ID = %v, want errNoID", err)
	}
}
