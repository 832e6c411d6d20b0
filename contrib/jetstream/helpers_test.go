package jetstream

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/outbox"
)

// testContext ends with the test, or after limit as a backstop.
func testContext(t *testing.T, limit time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), limit)
	t.Cleanup(cancel)
	return ctx
}

// startServer runs a NATS server with JetStream in this process, on a
// random loopback port with its store in a temporary directory, and
// returns its URL. It is shut down when t ends.
func startServer(t testing.TB) string {
	t.Helper()
	s, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      -1,
		JetStream: true,
		StoreDir:  t.TempDir(),
		NoLog:     true,
		NoSigs:    true,
	})
	if err != nil {
		t.Fatalf("nats-server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server: not ready after 10s")
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s.ClientURL()
}

// LocalNATS is the machine's NATS server, which one test also runs against.
const LocalNATS = "nats://127.0.0.1:4222"

// localServer returns LocalNATS, or fails the test saying how to provide
// one.
func localServer(t testing.TB) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", "127.0.0.1:4222", 2*time.Second)
	if err != nil {
		t.Fatalf(`this test also runs against a NATS server with JetStream on 127.0.0.1:4222, and none answers (%v).
Start one, e.g.:
  nats-server -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server
or, on this project's machines:
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log`, err)
	}
	c.Close()
	return LocalNATS
}

// connect opens a NATS connection and a JetStream context on it, closed
// when t ends.
func connect(t testing.TB, url string) (*nats.Conn, natsjs.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, nats.Name(t.Name()))
	if err != nil {
		t.Fatalf("connect to %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := natsjs.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// randomName returns a name no other test uses, for streams and subjects
// on a shared server.
func randomName(prefix string) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return prefix + hex.EncodeToString(b)
}

// testStream is a stream of a test's own, on subjects of its own.
type testStream struct {
	name   string
	prefix string // subjects are prefix + "." + topic
	stream natsjs.Stream
}

func (s *testStream) subject(e *dispatcher.Envelope) string { return s.prefix + "." + e.Topic }

// createStream creates a file stream named and prefixed at random, with
// the given duplicate window, and deletes it when t ends (the local
// server is shared).
func createStream(t testing.TB, ctx context.Context, js natsjs.JetStream, window time.Duration) *testStream {
	t.Helper()
	name := randomName("PBTEST_")
	prefix := randomName("pbtest")
	st, err := js.CreateStream(ctx, natsjs.StreamConfig{
		Name:       name,
		Subjects:   []string{prefix + ".>"},
		Storage:    natsjs.FileStorage,
		Duplicates: window,
	})
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := js.DeleteStream(ctx, name); err != nil {
			t.Errorf("delete stream %s: %v", name, err)
		}
	})
	return &testStream{name: name, prefix: prefix, stream: st}
}

// streamMsgs is how many messages the stream holds.
func (s *testStream) msgs(t testing.TB, ctx context.Context) int {
	t.Helper()
	info, err := s.stream.Info(ctx)
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	return int(info.State.Msgs)
}

// order is the payload of test messages: the n-th message (from 0) of its
// key.
type order struct {
	Key string `json:"key"`
	N   int    `json:"n"`
}

// publish writes n messages over keys keys to the outbox, topic
// "orders.created", the i-th with key i%keys, and returns their IDs.
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
		chunk = append(chunk, &postbox.Message{Topic: "orders.created", Type: "order.created.v1", Key: o.Key, Payload: payload,
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

// checkStream reads the whole stream and checks it holds every published
// message exactly once, each key's in publish order, with its headers.
func checkStream(t testing.TB, ctx context.Context, js natsjs.JetStream, s *testStream, ids map[uuid.UUID]bool) {
	t.Helper()
	it := readStream(t, ctx, js, s)
	total := s.msgs(t, ctx)
	if total != len(ids) {
		t.Errorf("stream holds %d messages, want %d", total, len(ids))
	}
	seen := make(map[uuid.UUID]bool, total)
	next := map[string]int{}
	for range total {
		msg, err := it.Next(natsjs.NextMaxWait(10 * time.Second))
		if err != nil {
			t.Fatalf("read stream: %v", err)
		}
		m, err := decode(msg.Subject(), msg.Headers(), msg.Data())
		if err != nil {
			t.Fatal(err)
		}
		var o order
		if err := json.Unmarshal(m.Payload, &o); err != nil {
			t.Fatal(err)
		}
		switch {
		case seen[m.ID]:
			t.Errorf("message %s twice in the stream", m.ID)
		case !ids[m.ID]:
			t.Errorf("message %s in the stream but never published", m.ID)
		case m.Key != o.Key || m.Topic != "orders.created" || m.Type != "order.created.v1" || m.CreatedAt.IsZero():
			t.Errorf("message %s arrived as %+v", m.ID, m)
		case o.N != next[o.Key]:
			t.Errorf("key %s: message %d stored where %d was due", o.Key, o.N, next[o.Key])
		}
		if m.Headers[postbox.HeaderCorrelationID] == "" {
			t.Errorf("message %s lost its correlation-id header: %v", m.ID, m.Headers)
		}
		seen[m.ID] = true
		next[o.Key] = o.N + 1
	}
}

// readStream iterates over the whole stream with an ordered consumer.
func readStream(t testing.TB, ctx context.Context, js natsjs.JetStream, s *testStream) natsjs.MessagesContext {
	t.Helper()
	oc, err := js.OrderedConsumer(ctx, s.name, natsjs.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	it, err := oc.Messages()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(it.Stop)
	return it
}

// createConsumer creates a durable pull consumer on s with explicit acks.
func createConsumer(t testing.TB, ctx context.Context, js natsjs.JetStream, s *testStream) natsjs.Consumer {
	t.Helper()
	c, err := js.CreateOrUpdateConsumer(ctx, s.name, natsjs.ConsumerConfig{
		Durable:   "inventory",
		AckPolicy: natsjs.AckExplicitPolicy,
	})
	if err != nil {
		t.Fatalf("create consumer: %v", err)
	}
	return c
}

// runConsumer runs a Consumer until the returned stop is called.
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

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(relayChild())
	}
	os.Exit(m.Run())
}
