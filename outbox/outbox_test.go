package outbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/internal/murmur2"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
)

func TestPublishFillsUUIDv7AndKeepsAGivenID(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 2)

	fresh := &postbox.Message{Topic: "order.created", Payload: []byte(`{}`)}
	if err := outbox.Publish(ctx, pool, fresh); err != nil {
		t.Fatal(err)
	}
	if fresh.ID == uuid.Nil || fresh.ID.Version() != 7 {
		t.Errorf("filled ID %s is version %d, want a UUIDv7", fresh.ID, fresh.ID.Version())
	}
	given := uuid.New() // v4: kept as it is
	kept := &postbox.Message{ID: given, Topic: "order.created", Payload: []byte(`{}`)}
	if err := outbox.Publish(ctx, pool, kept); err != nil {
		t.Fatal(err)
	}
	if kept.ID != given {
		t.Errorf("ID changed from %s to %s", given, kept.ID)
	}
	for _, id := range []uuid.UUID{fresh.ID, given} {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM postbox.outbox WHERE message_id = $1`, id).Scan(&n); err != nil || n != 1 {
			t.Errorf("outbox rows with message_id %s = %d (%v), want 1", id, n, err)
		}
	}
	// Later IDs sort after earlier ones: v7 is time-ordered.
	next := &postbox.Message{Topic: "order.created", Payload: []byte(`{}`)}
	if err := outbox.Publish(ctx, pool, next); err != nil {
		t.Fatal(err)
	}
	if strings.Compare(next.ID.String(), fresh.ID.String()) <= 0 {
		t.Errorf("ID %s published after %s sorts before it", next.ID, fresh.ID)
	}
}

// The row holds the message as given: Send marks a queue, keys hash with
// murmur2 (keyless messages hash their ID), headers are a JSON object,
// DeliverAt is kept, and created_at is the publishing transaction's start.
func TestRowsHoldTheMessage(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 2)

	deliverAt := time.Now().Add(time.Hour).Truncate(time.Microsecond)
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	keyed := &postbox.Message{Topic: "order.created", Type: "order.created.v1", Key: "order-1", Payload: []byte(`{"a":1}`),
		Headers: map[string]string{postbox.HeaderCorrelationID: "c-1", "x-tenant": "acme"}, DeliverAt: deliverAt,
		CreatedAt: time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)}
	keyless := &postbox.Message{Topic: "billing"}
	if err := outbox.Publish(ctx, tx, keyed); err != nil {
		t.Fatal(err)
	}
	if err := outbox.Send(ctx, tx, keyless); err != nil {
		t.Fatal(err)
	}

	type row struct {
		keyHash     int32
		isQueue     bool
		topic, typ  string
		key         *string
		payload     []byte
		headers     []byte
		createdAt   time.Time
		deliverAt   *time.Time
		txStartedAt time.Time
	}
	read := func(id uuid.UUID) row {
		var r row
		err := tx.QueryRow(ctx, `SELECT key_hash, is_queue, topic, type, key, payload, headers, created_at, deliver_at, now()
			FROM postbox.outbox WHERE message_id = $1`, id).
			Scan(&r.keyHash, &r.isQueue, &r.topic, &r.typ, &r.key, &r.payload, &r.headers, &r.createdAt, &r.deliverAt, &r.txStartedAt)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}

	k := read(keyed.ID)
	if k.isQueue || k.topic != "order.created" || k.typ != keyed.Type || k.key == nil || *k.key != "order-1" || string(k.payload) != `{"a":1}` {
		t.Errorf("keyed row = %+v", k)
	}
	if want := murmur2.Positive([]byte("order-1")); k.keyHash != want {
		t.Errorf("key_hash = %d, want murmur2 %d", k.keyHash, want)
	}
	var h map[string]string
	if err := json.Unmarshal(k.headers, &h); err != nil || len(h) != 2 || h["x-tenant"] != "acme" || h[postbox.HeaderCorrelationID] != "c-1" {
		t.Errorf("headers = %s (%v), want the two given", k.headers, err)
	}
	if k.deliverAt == nil || !k.deliverAt.Equal(deliverAt) {
		t.Errorf("deliver_at = %v, want %v", k.deliverAt, deliverAt)
	}
	if !k.createdAt.Equal(k.txStartedAt) {
		t.Errorf("created_at = %v, want the transaction's start %v (the caller's CreatedAt is ignored)", k.createdAt, k.txStartedAt)
	}

	q := read(keyless.ID)
	if !q.isQueue || q.topic != "billing" || q.key != nil || q.payload == nil || len(q.payload) != 0 || q.headers != nil || q.deliverAt != nil {
		t.Errorf("keyless send row = %+v, want a queue row with empty payload and no key, headers or deliver_at", q)
	}
	if want := murmur2.Positive(keyless.ID[:]); q.keyHash != want {
		t.Errorf("keyless key_hash = %d, want murmur2 of the ID %d", q.keyHash, want)
	}
}

// PublishBatch writes all its messages with one COPY — one statement, so one
// command ID for every row — where Publish writes one statement each.
func TestPublishBatchIsOneCopy(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 2)

	const n = 500
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	// Three single publishes first: three command IDs.
	for range 3 {
		if err := outbox.Publish(ctx, tx, &postbox.Message{Topic: "single", Payload: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
	}
	msgs := make([]*postbox.Message, n)
	given := postbox.NewID()
	for i := range msgs {
		msgs[i] = &postbox.Message{Topic: "batch", Key: "k", Payload: []byte(`{}`)}
	}
	msgs[7].ID = given
	if err := outbox.PublishBatch(ctx, tx, msgs); err != nil {
		t.Fatal(err)
	}
	var rows, commands, singleCommands, ids int
	err = tx.QueryRow(ctx, `SELECT count(*) FILTER (WHERE topic = 'batch'),
			count(DISTINCT cmin::text) FILTER (WHERE topic = 'batch'),
			count(DISTINCT cmin::text) FILTER (WHERE topic = 'single'),
			count(DISTINCT message_id) FILTER (WHERE topic = 'batch')
		FROM postbox.outbox`).Scan(&rows, &commands, &singleCommands, &ids)
	if err != nil {
		t.Fatal(err)
	}
	if rows != n || commands != 1 || ids != n {
		t.Errorf("PublishBatch wrote %d rows with %d distinct IDs in %d statements, want %d rows, %d IDs, 1 statement", rows, ids, commands, n, n)
	}
	if singleCommands != 3 {
		t.Errorf("three Publish calls used %d statements, want 3 (the cmin check would not tell)", singleCommands)
	}
	if msgs[7].ID != given {
		t.Errorf("PublishBatch replaced a given ID")
	}
	for i, m := range msgs {
		if m.ID.Version() != 7 {
			t.Fatalf("message %d has ID %s, want a UUIDv7", i, m.ID)
		}
	}
	// Rows are in slice order (outbox id order is publish order).
	var ordered bool
	if err := tx.QueryRow(ctx, `SELECT bool_and(message_id = ($1::uuid[])[rn]) FROM (
			SELECT message_id, row_number() OVER (ORDER BY id) AS rn FROM postbox.outbox WHERE topic = 'batch') r`,
		idsOf(msgs)).Scan(&ordered); err != nil || !ordered {
		t.Errorf("batch rows not in slice order (%v)", err)
	}

	// Empty batch: nothing to do.
	if err := outbox.PublishBatch(ctx, tx, nil); err != nil {
		t.Errorf("PublishBatch(nil) = %v", err)
	}
	// SendBatch marks queue rows.
	if err := outbox.SendBatch(ctx, tx, []*postbox.Message{{Topic: "billing"}, {Topic: "billing"}}); err != nil {
		t.Fatal(err)
	}
	var queued int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM postbox.outbox WHERE is_queue AND topic = 'billing'`).Scan(&queued); err != nil || queued != 2 {
		t.Errorf("SendBatch queue rows = %d (%v), want 2", queued, err)
	}
}

func idsOf(msgs []*postbox.Message) []uuid.UUID {
	ids := make([]uuid.UUID, len(msgs))
	for i, m := range msgs {
		ids[i] = m.ID
	}
	return ids
}

// Every message of a batch is validated before any is written: one bad
// message anywhere writes nothing.
func TestPublishBatchValidatesAllFirst(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 2)

	for _, bad := range []int{0, 5, 9} {
		msgs := make([]*postbox.Message, 10)
		for i := range msgs {
			msgs[i] = &postbox.Message{Topic: "batch", Payload: []byte(`{}`)}
		}
		msgs[bad].Headers = map[string]string{"bad name": "v"}
		err := outbox.PublishBatch(ctx, pool, msgs)
		if !errors.Is(err, postbox.ErrInvalid) {
			t.Fatalf("bad message %d: err = %v, want ErrInvalid", bad, err)
		}
		var ve *postbox.ValidationError
		if want := fmt.Sprintf("msgs[%d].Headers", bad); !errors.As(err, &ve) || ve.Field != want {
			t.Errorf("bad message %d: err = %v, want a ValidationError for %s", bad, err, want)
		}
	}
	err := outbox.SendBatch(ctx, pool, []*postbox.Message{{Topic: "billing"}, nil})
	if !errors.Is(err, postbox.ErrInvalid) {
		t.Errorf("SendBatch with a nil message: err = %v, want ErrInvalid", err)
	}
	err = outbox.SendBatch(ctx, pool, []*postbox.Message{{Topic: "billing"}, {Topic: "Billing"}})
	if !errors.Is(err, postbox.ErrInvalid) {
		t.Errorf("SendBatch to a bad queue name: err = %v, want ErrInvalid", err)
	}
	// One *Message twice in a batch (its ID filled by the first) is one
	// message twice: refused, naming the ID field.
	reused := &postbox.Message{Topic: "batch", Payload: []byte(`{}`)}
	err = outbox.PublishBatch(ctx, pool, []*postbox.Message{reused, {Topic: "batch"}, reused})
	var dup *postbox.ValidationError
	if !errors.Is(err, postbox.ErrInvalid) || !errors.As(err, &dup) || dup.Field != "msgs[2].ID" {
		t.Errorf("PublishBatch with one message twice: err = %v, want a ValidationError for msgs[2].ID", err)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM postbox.outbox`).Scan(&n); err != nil || n != 0 {
		t.Errorf("outbox rows after rejected batches = %d (%v), want 0", n, err)
	}
}

func TestLimits(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 2)

	small := outbox.Outbox{Limits: postbox.Limits{MaxPayloadBytes: 10, MaxHeaders: 1, MaxKeyBytes: 3}}
	cases := []struct {
		name string
		o    outbox.Outbox
		msg  postbox.Message
		ok   bool
	}{
		{"default payload at 1 MiB", outbox.Outbox{}, postbox.Message{Payload: make([]byte, postbox.DefaultMaxPayloadBytes)}, true},
		{"default payload over 1 MiB", outbox.Outbox{}, postbox.Message{Payload: make([]byte, postbox.DefaultMaxPayloadBytes+1)}, false},
		{"custom payload at limit", small, postbox.Message{Payload: make([]byte, 10)}, true},
		{"custom payload over limit", small, postbox.Message{Payload: make([]byte, 11)}, false},
		{"custom one header", small, postbox.Message{Headers: map[string]string{"a": "b"}}, true},
		{"custom two headers", small, postbox.Message{Headers: map[string]string{"a": "b", "c": "d"}}, false},
		{"custom key at limit", small, postbox.Message{Key: "abc"}, true},
		{"custom key over limit", small, postbox.Message{Key: "abcd"}, false},
		{"default 64 headers", outbox.Outbox{}, postbox.Message{Headers: headers(64, 1)}, true},
		{"default 65 headers", outbox.Outbox{}, postbox.Message{Headers: headers(65, 1)}, false},
		{"default header bytes over 16 KiB", outbox.Outbox{}, postbox.Message{Headers: headers(2, 9000)}, false},
		{"type over 200 bytes", outbox.Outbox{}, postbox.Message{Type: strings.Repeat("t", 201)}, false},
		{"unicode key", outbox.Outbox{}, postbox.Message{Key: "kunde-ß-✓"}, true},
	}
	want := 0
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := c.msg
			m.Topic = "limits"
			err := c.o.Publish(ctx, pool, &m)
			switch {
			case c.ok && err != nil:
				t.Errorf("%s: %v, want accepted", c.name, err)
			case !c.ok && !errors.Is(err, postbox.ErrInvalid):
				t.Errorf("%s: err = %v, want ErrInvalid", c.name, err)
			}
			if c.ok {
				want++
			}
		})
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM postbox.outbox`).Scan(&n); err != nil || n != want {
		t.Errorf("outbox rows = %d (%v), want %d accepted messages", n, err, want)
	}
}

func headers(n, valueBytes int) map[string]string {
	h := make(map[string]string, n)
	for i := range n {
		h["h"+strings.Repeat("x", i%5)+string(rune('a'+i%26))+string(rune('a'+i/26))] = strings.Repeat("v", valueBytes)
	}
	return h
}

// Rows go straight into the outbox slot of the moment (schema migration 2):
// the partition named by their slot column, which is the slot
// postbox.outbox_slot() names now, give or take one for the clock moving on.
func TestRowsLandInTheCurrentSlot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 2)

	one := &postbox.Message{Topic: "slots", Key: "k", Payload: []byte(`{}`)}
	keyless := &postbox.Message{Topic: "slots", Payload: []byte(`{}`)}
	batch := []*postbox.Message{{Topic: "slots", Key: "k"}, {Topic: "slots"}}
	if err := outbox.Publish(ctx, pool, one); err != nil {
		t.Fatal(err)
	}
	if err := outbox.Send(ctx, pool, keyless); err != nil {
		t.Fatal(err)
	}
	if err := outbox.PublishBatch(ctx, pool, batch); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*postbox.Message{one, keyless, batch[0], batch[1]} {
		var table string
		var slot, now int
		if err := pool.QueryRow(ctx, `SELECT tableoid::regclass::text, slot, postbox.outbox_slot() FROM postbox.outbox WHERE message_id = $1`, m.ID).
			Scan(&table, &slot, &now); err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("postbox.outbox_%d", slot); table != want {
			t.Errorf("message %s with slot %d is in %s, want %s", m.ID, slot, table, want)
		}
		if d := (now - slot + 8) % 8; d > 1 {
			t.Errorf("message %s in slot %d, but postbox.outbox_slot() is %d", m.ID, slot, now)
		}
	}
}

// Per key, outbox id order is commit order: a transaction publishing a key
// waits for an open one that published the same key, so it draws its id
// after that one commits. Other keys do not wait.
func TestPublishesOfOneKeyCommitInIDOrder(t *testing.T) {
	t.Parallel()
	for name, publish := range map[string]func(ctx context.Context, db postbox.DBTX, m *postbox.Message) error{
		"Publish": outbox.Publish,
		"PublishBatch": func(ctx context.Context, db postbox.DBTX, m *postbox.Message) error {
			return outbox.PublishBatch(ctx, db, []*postbox.Message{{Topic: "ordered", Key: "other-in-batch"}, m})
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			pool := pgtest.Pool(t, 4)

			first, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer first.Rollback(ctx)
			early := &postbox.Message{Topic: "ordered", Key: "k", Payload: []byte(`{"n":1}`)}
			if err := outbox.Publish(ctx, first, early); err != nil {
				t.Fatal(err)
			}

			second, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer second.Rollback(ctx)
			var pid int32
			if err := second.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
				t.Fatal(err)
			}
			late := &postbox.Message{Topic: "ordered", Key: "k", Payload: []byte(`{"n":2}`)}
			done := make(chan error, 1)
			go func() { done <- publish(ctx, second, late) }()

			pgtest.WaitFor(t, ctx, 10*time.Second, "the second publisher to wait for the key's lock", func() bool {
				return pgtest.Count(t, ctx, pool, `SELECT count(*) FROM pg_locks WHERE pid = $1 AND locktype = 'advisory' AND NOT granted`, pid) == 1
			})
			select {
			case err := <-done:
				t.Fatalf("the second publish of key k returned (%v) while the first transaction is open", err)
			default:
			}
			// Another key does not wait.
			if err := outbox.Publish(ctx, pool, &postbox.Message{Topic: "ordered", Key: "elsewhere"}); err != nil {
				t.Fatal(err)
			}
			if err := first.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if err := second.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			var earlyID, lateID int64
			if err := pool.QueryRow(ctx, `SELECT (SELECT id FROM postbox.outbox WHERE message_id = $1), (SELECT id FROM postbox.outbox WHERE message_id = $2)`,
				early.ID, late.ID).Scan(&earlyID, &lateID); err != nil {
				t.Fatal(err)
			}
			if lateID <= earlyID {
				t.Fatalf("the later commit has outbox id %d, not above the earlier commit's %d", lateID, earlyID)
			}
		})
	}
}
