package watermill_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	wm "github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/contrib/watermill"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/dlq"
	"github.com/postbox-dev/postbox/internal/pgtest"
)

// fastRetries retry at once, so tests wait for attempts, not backoff.
var fastRetries = dispatcher.Backoff{Initial: time.Millisecond, Max: 10 * time.Millisecond, Multiplier: 2}

func newSubscriber(t *testing.T, pool *pgxpool.Pool, cfg watermill.SubscriberConfig) *watermill.Subscriber {
	t.Helper()
	sub, err := watermill.NewSubscriber(pool, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	return sub
}

func newPublisher(t *testing.T, db watermill.DB, cfg watermill.PublisherConfig) *watermill.Publisher {
	t.Helper()
	pub, err := watermill.NewPublisher(db, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func subscribe(t *testing.T, sub message.Subscriber, topic string) <-chan *message.Message {
	t.Helper()
	ch, err := sub.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// receive returns the next message, or fails the test after limit.
func receive(t *testing.T, ch <-chan *message.Message, limit time.Duration) *message.Message {
	t.Helper()
	select {
	case m, ok := <-ch:
		if !ok {
			t.Fatal("channel closed")
		}
		return m
	case <-time.After(limit):
		t.Fatalf("no message within %s", limit)
		return nil
	}
}

// waitFor polls cond until it holds, or fails the test after limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", limit, what)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, not waiting for one
	}
}

func publishN(t *testing.T, pub message.Publisher, topic string, n int) map[string]bool {
	t.Helper()
	ids := make(map[string]bool, n)
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.NewMessage(wm.NewUUID(), fmt.Appendf(nil, "%d", i))
		ids[msgs[i].UUID] = true
	}
	if err := pub.Publish(topic, msgs...); err != nil {
		t.Fatal(err)
	}
	return ids
}

// TestConsumerGroups: two subscribers of one group share its messages,
// each handled by one of them, and a second group gets every message.
//
// To show the sharing without depending on timing, each subscriber of the
// first group holds its first message unacked until the other has
// received one: while one holds a claim, the other must be given different
// messages.
func TestConsumerGroups(t *testing.T) {
	t.Parallel()
	b := setup(t, 4, 8)
	const topic, n = "invoices.issued", 200
	cfg := func(group string) watermill.SubscriberConfig {
		return watermill.SubscriberConfig{ConsumerGroup: group, BatchSize: 5}
	}
	a1 := newSubscriber(t, b.sub, cfg("billing"))
	a2 := newSubscriber(t, b.sub, cfg("billing"))
	other := newSubscriber(t, b.sub, cfg("audit"))
	for _, s := range []*watermill.Subscriber{a1, other} {
		if err := s.SubscribeInitialize(topic); err != nil {
			t.Fatal(err)
		}
	}
	want := publishN(t, newPublisher(t, b.pub, watermill.PublisherConfig{}), topic, n)

	var (
		mu     sync.Mutex
		got    = map[string][]string{} // message UUID → who handled it
		counts = map[string]int{}
	)
	started := map[string]chan struct{}{"a1": make(chan struct{}), "a2": make(chan struct{})}
	read := func(name string, ch <-chan *message.Message, hold chan struct{}, stop <-chan struct{}) {
		first := true
		for {
			select {
			case m := <-ch:
				if first && hold != nil {
					close(started[name])
					select {
					case <-hold: // the other subscriber of the group has a message too
					case <-stop:
						return
					}
				}
				first = false
				mu.Lock()
				got[m.UUID] = append(got[m.UUID], name)
				counts[name]++
				mu.Unlock()
				m.Ack()
			case <-stop:
				return
			}
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { read("a1", subscribe(t, a1, topic), started["a2"], stop) })
	wg.Go(func() { read("a2", subscribe(t, a2, topic), started["a1"], stop) })
	wg.Go(func() { read("audit", subscribe(t, other, topic), nil, stop) })
	defer func() { close(stop); wg.Wait() }()

	waitFor(t, 30*time.Second, "every message handled by both groups", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return counts["a1"]+counts["a2"] == n && counts["audit"] == n
	})
	mu.Lock()
	defer mu.Unlock()
	for id := range want {
		by := got[id]
		billing, audit := 0, 0
		for _, who := range by {
			if who == "audit" {
				audit++
			} else {
				billing++
			}
		}
		if billing != 1 || audit != 1 {
			t.Errorf("message %s handled by %v, want once by billing and once by audit", id, by)
		}
	}
	if counts["a1"] == 0 || counts["a2"] == 0 {
		t.Errorf("billing's subscribers handled %d and %d messages: the work was not shared", counts["a1"], counts["a2"])
	}
	t.Logf("billing: a1 handled %d, a2 %d; audit %d", counts["a1"], counts["a2"], counts["audit"])
}

// TestAckCommitsNackRollsBackThenDeadLetters: what a handler writes
// through the message's transaction commits with its Ack and is rolled
// back by its Nack; after MaxAttempts Nacks the message is a dead letter.
func TestAckCommitsNackRollsBackThenDeadLetters(t *testing.T) {
	t.Parallel()
	b := setup(t, 4, 4)
	ctx := context.Background()
	if _, err := b.pub.Exec(ctx, `CREATE TABLE effects (message text, attempt int)`); err != nil {
		t.Fatal(err)
	}
	const topic, group = "payments", "ledger"
	sub := newSubscriber(t, b.sub, watermill.SubscriberConfig{
		ConsumerGroup: group,
		Options:       dispatcher.Options{MaxAttempts: 3, Backoff: fastRetries},
	})
	ch := subscribe(t, sub, topic)
	good, bad := message.NewMessage(wm.NewUUID(), []byte("good")), message.NewMessage(wm.NewUUID(), []byte("bad"))
	if err := newPublisher(t, b.pub, watermill.PublisherConfig{}).Publish(topic, good, bad); err != nil {
		t.Fatal(err)
	}
	name, _ := watermill.SubscriberName(group, topic)
	badID := uuid.MustParse(bad.UUID)
	var afterAck error
	for nacks := 0; nacks < 3 || afterAck == nil; {
		m := receive(t, ch, 15*time.Second)
		tx, ok := watermill.TxFromContext(m.Context())
		d, _ := watermill.DeliveryFromContext(m.Context())
		if !ok || d == nil {
			t.Fatal("message context carries no transaction or delivery")
		}
		if _, err := tx.Exec(m.Context(), `INSERT INTO effects VALUES ($1, $2)`, m.UUID, d.Attempt); err != nil {
			t.Fatal(err)
		}
		if m.UUID == bad.UUID {
			nacks++
			if d.Attempt != nacks {
				t.Errorf("nack %d: delivery attempt %d", nacks, d.Attempt)
			}
			m.Nack()
			continue
		}
		m.Ack()
		// The consumer has moved on: the transaction is no longer the
		// message's to write in.
		waitFor(t, 5*time.Second, "the transaction refuses statements after the Ack", func() bool {
			_, afterAck = tx.Exec(context.Background(), `SELECT 1`)
			return afterAck != nil
		})
		if !errors.Is(afterAck, watermill.ErrTxDone) {
			t.Errorf("statement after Ack: %v, want ErrTxDone", afterAck)
		}
	}
	var letter dlq.DeadLetter
	waitFor(t, 15*time.Second, "the nacked message is a dead letter", func() bool {
		var err error
		letter, err = dlq.Get(ctx, b.pub, name, badID)
		return err == nil
	})
	if letter.Attempts != 3 || !strings.Contains(letter.LastError, "nacked") {
		t.Errorf("dead letter: %d attempts, last error %q; want 3, nacked", letter.Attempts, letter.LastError)
	}
	rows, err := b.pub.Query(ctx, `SELECT message, attempt FROM effects ORDER BY message`)
	if err != nil {
		t.Fatal(err)
	}
	var effects []string
	for rows.Next() {
		var m string
		var a int
		if err := rows.Scan(&m, &a); err != nil {
			t.Fatal(err)
		}
		effects = append(effects, fmt.Sprintf("%s@%d", m, a))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if want := []string{good.UUID + "@1"}; !slicesEqual(effects, want) {
		t.Errorf("effects %v, want %v: only the acked message's, once", effects, want)
	}
}

func slicesEqual(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestPublishInHandlerTransaction: a message published with the context of
// a message being handled is written in its transaction, so it exists if
// and only if that message is acked.
func TestPublishInHandlerTransaction(t *testing.T) {
	t.Parallel()
	b := setup(t, 4, 4)
	pub := newPublisher(t, nil, watermill.PublisherConfig{Key: func(string, *message.Message) string { return "k" }})
	poolPub := newPublisher(t, b.pub, watermill.PublisherConfig{Key: func(string, *message.Message) string { return "k" }})
	in := newSubscriber(t, b.sub, watermill.SubscriberConfig{ConsumerGroup: "shipping", Options: dispatcher.Options{Backoff: fastRetries}})
	out := newSubscriber(t, b.sub, watermill.SubscriberConfig{ConsumerGroup: "tracking"})
	if err := out.SubscribeInitialize("shipments"); err != nil {
		t.Fatal(err)
	}
	inCh := subscribe(t, in, "orders")
	if err := poolPub.Publish("orders", message.NewMessage(wm.NewUUID(), []byte("order-1"))); err != nil {
		t.Fatal(err)
	}
	var acked string
	for attempt := 1; attempt <= 2; attempt++ {
		m := receive(t, inCh, 15*time.Second)
		shipment := message.NewMessage(wm.NewUUID(), []byte("shipment of "+string(m.Payload)))
		shipment.SetContext(m.Context()) // the delivery's transaction
		if err := pub.Publish("shipments", shipment); err != nil {
			t.Fatal(err)
		}
		if attempt == 1 {
			m.Nack() // the shipment published in this attempt must vanish with it
			continue
		}
		acked = shipment.UUID
		m.Ack()
	}
	outCh := subscribe(t, out, "shipments")
	first := receive(t, outCh, 15*time.Second)
	first.Ack()
	if first.UUID != acked {
		t.Fatalf("first shipment %s, want %s (the acked attempt's)", first.UUID, acked)
	}
	// Published after the acked one committed, with the same key: had the
	// nacked attempt's shipment survived, it would come before this one.
	sentinel := message.NewMessage(wm.NewUUID(), []byte("sentinel"))
	if err := poolPub.Publish("shipments", sentinel); err != nil {
		t.Fatal(err)
	}
	next := receive(t, outCh, 15*time.Second)
	next.Ack()
	if next.UUID != sentinel.UUID {
		t.Fatalf("after the acked shipment came %s (%q), want the sentinel", next.UUID, next.Payload)
	}
	if md := first.Metadata; md[postbox.HeaderCausationID] == "" || md[postbox.HeaderCorrelationID] == "" {
		t.Errorf("shipment metadata %v: want causation-id and correlation-id naming the order", md)
	}
}

// TestRouterWithPropagateTxAndInProcessRelay runs a Watermill router whose
// handler turns orders into invoices; PropagateTx writes the invoices in
// the order's transaction. The subscriber runs its own relay (RunRelay),
// as a service with no `postbox relay` beside it would.
func TestRouterWithPropagateTxAndInProcessRelay(t *testing.T) {
	t.Parallel()
	pool := newPool(t, pgtest.URL(t), 8)
	sub := newSubscriber(t, pool, watermill.SubscriberConfig{ConsumerGroup: "invoicing", RunRelay: true, Concurrency: 2})
	check := newSubscriber(t, pool, watermill.SubscriberConfig{ConsumerGroup: "check"})
	if err := check.SubscribeInitialize("invoices"); err != nil {
		t.Fatal(err)
	}
	if err := sub.SubscribeInitialize("orders"); err != nil {
		t.Fatal(err)
	}
	pub := newPublisher(t, pool, watermill.PublisherConfig{})
	router, err := message.NewRouter(message.RouterConfig{}, wm.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	router.AddMiddleware(watermill.PropagateTx)
	router.AddHandler("invoice", "orders", sub, "invoices", pub, func(m *message.Message) ([]*message.Message, error) {
		if _, ok := watermill.TxFromContext(m.Context()); !ok {
			return nil, errors.New("no transaction")
		}
		return []*message.Message{message.NewMessage(wm.NewUUID(), append([]byte("invoice for "), m.Payload...))}, nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- router.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-router.Running()

	orders := publishN(t, pub, "orders", 20)
	ch := subscribe(t, check, "invoices")
	got := map[string]bool{}
	for len(got) < len(orders) {
		m := receive(t, ch, 15*time.Second)
		got[string(m.Payload)] = true
		m.Ack()
	}
	for i := range len(orders) {
		if !got[fmt.Sprintf("invoice for %d", i)] {
			t.Errorf("no invoice for order %d", i)
		}
	}
}

// TestMessagesRoundTrip: UUIDs, metadata and payloads come back exactly,
// through topics and groups that are not postbox names.
func TestMessagesRoundTrip(t *testing.T) {
	t.Parallel()
	b := setup(t, 4, 4)
	const topic, group = "Orders/Created ✓", "Billing Service"
	sub := newSubscriber(t, b.sub, watermill.SubscriberConfig{ConsumerGroup: group})
	ch := subscribe(t, sub, topic)
	var sent []*message.Message
	for _, id := range []string{wm.NewUUID(), wm.NewULID(), "", "order-42", "3F2A1B4C-0D5E-4F60-8A7B-9C0D1E2F3A4B"} {
		m := message.NewMessage(id, []byte("payload of "+id+"\x00\xff"))
		m.Metadata = message.Metadata{"test": id, "_watermill_name": "x", "with space": "y", "bad": "\xff", "traceparent": "00-abc-def-01"}
		sent = append(sent, m)
	}
	if err := newPublisher(t, b.pub, watermill.PublisherConfig{}).Publish(topic, sent...); err != nil {
		t.Fatal(err)
	}
	got := map[string]*message.Message{}
	for range sent {
		m := receive(t, ch, 15*time.Second)
		got[m.Metadata["test"]] = m
		m.Ack()
	}
	for _, s := range sent {
		g := got[s.Metadata["test"]]
		if g == nil {
			t.Errorf("message %q not received", s.UUID)
			continue
		}
		if g.UUID != s.UUID || string(g.Payload) != string(s.Payload) || !maps.Equal(g.Metadata, s.Metadata) {
			t.Errorf("sent (%q, %q, %q), received (%q, %q, %q)", s.UUID, s.Payload, s.Metadata, g.UUID, g.Payload, g.Metadata)
		}
	}
}

func TestPublisherAndSubscriberRefuse(t *testing.T) {
	t.Parallel()
	pool := newPool(t, pgtest.URL(t), 2)
	if _, err := watermill.NewSubscriber(pool, watermill.SubscriberConfig{}); !errors.Is(err, postbox.ErrInvalid) || !strings.Contains(err.Error(), "ConsumerGroup") {
		t.Errorf("subscriber without a group: %v", err)
	}
	if _, err := watermill.NewSubscriber(pool, watermill.SubscriberConfig{ConsumerGroup: "g", Concurrency: -1}); err == nil {
		t.Error("negative concurrency accepted")
	}
	pub := newPublisher(t, nil, watermill.PublisherConfig{})
	if err := pub.Publish("t", message.NewMessage(wm.NewUUID(), nil)); err == nil || !strings.Contains(err.Error(), "no DB") {
		t.Errorf("publish without a transaction or DB: %v", err)
	}
	pub = newPublisher(t, pool, watermill.PublisherConfig{})
	if err := pub.Publish(strings.Repeat("T", 100), message.NewMessage(wm.NewUUID(), nil)); !errors.Is(err, postbox.ErrInvalid) {
		t.Errorf("publish to a topic too long to encode: %v", err)
	}
	big := message.NewMessage(wm.NewUUID(), make([]byte, postbox.DefaultMaxPayloadBytes+1))
	if err := pub.Publish("t", big); !errors.Is(err, postbox.ErrInvalid) {
		t.Errorf("publish of an oversized payload: %v", err)
	}
	_ = pub.Close()
	if err := pub.Publish("t", message.NewMessage(wm.NewUUID(), nil)); !errors.Is(err, watermill.ErrPublisherClosed) {
		t.Errorf("publish after Close: %v", err)
	}
	sub := newSubscriber(t, pool, watermill.SubscriberConfig{ConsumerGroup: "g"})
	if _, err := sub.Subscribe(context.Background(), ""); !errors.Is(err, postbox.ErrInvalid) {
		t.Errorf("subscribe to the empty topic: %v", err)
	}
	_ = sub.Close()
	if _, err := sub.Subscribe(context.Background(), "t"); !errors.Is(err, watermill.ErrSubscriberClosed) {
		t.Errorf("subscribe after Close: %v", err)
	}
}
