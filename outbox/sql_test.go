package outbox_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/murmur2"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

// sqlDB opens database/sql over pgx's stdlib driver on pool's database.
func sqlDB(t *testing.T, pool *pgxpool.Pool) *sql.DB {
	t.Helper()
	db := stdlib.OpenDBFromPool(pool)
	t.Cleanup(func() { db.Close() })
	return db
}

// outboxRow is what a message's row holds, less what differs between two
// writes of one message (the id, the message ID, the time).
type outboxRow struct {
	Slot      int
	KeyHash   int32
	IsQueue   bool
	Topic     string
	Type      string
	Key       *string
	Payload   string
	Headers   *string
	DeliverAt *time.Time
}

func (r outboxRow) String() string {
	key, headers := "<nil>", "<nil>"
	if r.Key != nil {
		key = *r.Key
	}
	if r.Headers != nil {
		headers = *r.Headers
	}
	return fmt.Sprintf("slot=%d hash=%d queue=%t topic=%s type=%s key=%s payload=%s headers=%s deliver_at=%v",
		r.Slot, r.KeyHash, r.IsQueue, r.Topic, r.Type, key, r.Payload, headers, r.DeliverAt)
}

func readRow(t *testing.T, ctx context.Context, pool *pgxpool.Pool, id uuid.UUID) outboxRow {
	t.Helper()
	var r outboxRow
	err := pool.QueryRow(ctx, `SELECT slot, key_hash, is_queue, topic, type, key, convert_from(payload, 'UTF8'), headers::text, deliver_at
		FROM postbox.outbox WHERE message_id = $1`, id).
		Scan(&r.Slot, &r.KeyHash, &r.IsQueue, &r.Topic, &r.Type, &r.Key, &r.Payload, &r.Headers, &r.DeliverAt)
	if err != nil {
		t.Fatalf("outbox row of %s: %v", id, err)
	}
	return r
}

// The database/sql producers write the row the pgx ones write, for each
// form: one message or a batch, a topic or a queue, with and without key,
// headers and DeliverAt.
func TestSQLWritesTheSameRow(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	sdb := sqlDB(t, pool)

	deliverAt := time.Now().Add(time.Hour).Truncate(time.Microsecond)
	messages := func() []*postbox.Message {
		return []*postbox.Message{
			{Topic: "order.created", Type: "order.created.v1", Key: "order-1", Payload: []byte(`{"a":1}`),
				Headers: map[string]string{postbox.HeaderCorrelationID: "c-1", "x-tenant": "acme"}, DeliverAt: deliverAt},
			{Topic: "order.created", Key: "order-2"},
			{Topic: "billing", Payload: []byte(`"plain"`)},
		}
	}
	type writer struct {
		pgx func(ctx context.Context, db postbox.DBTX, msgs []*postbox.Message) error
		sql func(ctx context.Context, db outbox.SQLExecer, msgs []*postbox.Message) error
	}
	one := func(pgx func(context.Context, postbox.DBTX, *postbox.Message) error,
		sql func(context.Context, outbox.SQLExecer, *postbox.Message) error) writer {
		return writer{
			pgx: func(ctx context.Context, db postbox.DBTX, msgs []*postbox.Message) error {
				for _, m := range msgs {
					if err := pgx(ctx, db, m); err != nil {
						return err
					}
				}
				return nil
			},
			sql: func(ctx context.Context, db outbox.SQLExecer, msgs []*postbox.Message) error {
				for _, m := range msgs {
					if err := sql(ctx, db, m); err != nil {
						return err
					}
				}
				return nil
			},
		}
	}
	tests := []struct {
		name string
		w    writer
	}{
		{"Publish", one(outbox.Publish, outbox.PublishSQL)},
		{"Send", one(outbox.Send, outbox.SendSQL)},
		{"PublishBatch", writer{outbox.PublishBatch, outbox.PublishBatchSQL}},
		{"SendBatch", writer{outbox.SendBatch, outbox.SendBatchSQL}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			viaPgx, viaSQL := messages(), messages()
			if err := tt.w.pgx(ctx, pool, viaPgx); err != nil {
				t.Fatal(err)
			}
			tx, err := sdb.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := tt.w.sql(ctx, tx, viaSQL); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			for i := range viaSQL {
				if viaSQL[i].ID == uuid.Nil || viaSQL[i].ID == viaPgx[i].ID {
					t.Fatalf("message %d: ID %s, want a fresh one", i, viaSQL[i].ID)
				}
				want, got := readRow(t, ctx, pool, viaPgx[i].ID), readRow(t, ctx, pool, viaSQL[i].ID)
				if viaSQL[i].Key == "" {
					// Keyless messages hash their own ID.
					want.KeyHash = murmur2.Positive(viaSQL[i].ID[:])
				}
				// Both writes ran within a second or two: the slot may have
				// turned between them, so compare it with the slot of now.
				want.Slot, got.Slot = 0, 0
				if got.String() != want.String() {
					t.Errorf("message %d:\n sql %s\n pgx %s", i, got, want)
				}
			}
		})
	}
}

// A message published through a *sql.Tx exists if and only if the
// transaction commits, and a committed one is relayed like any other.
func TestSQLCommitAndRollback(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	sdb := sqlDB(t, pool)
	if err := dispatcher.DeclareSubscriber(ctx, pool, "billing", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: "billing", Topic: "order.*"}); err != nil {
		t.Fatal(err)
	}

	publish := func(commit bool) []uuid.UUID {
		tx, err := sdb.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		one := &postbox.Message{Topic: "order.created", Key: "o-1", Payload: []byte(`{}`)}
		if err := outbox.PublishSQL(ctx, tx, one); err != nil {
			t.Fatal(err)
		}
		batch := []*postbox.Message{{Topic: "order.paid", Key: "o-1"}, {Topic: "order.paid"}}
		if err := outbox.PublishBatchSQL(ctx, tx, batch); err != nil {
			t.Fatal(err)
		}
		if commit {
			err = tx.Commit()
		} else {
			err = tx.Rollback()
		}
		if err != nil {
			t.Fatal(err)
		}
		return []uuid.UUID{one.ID, batch[0].ID, batch[1].ID}
	}
	rolledBack := publish(false)
	committed := publish(true)
	if n := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.outbox WHERE message_id = ANY($1)`, rolledBack); n != 0 {
		t.Errorf("%d rows of a rolled back transaction, want 0", n)
	}
	if n := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.outbox WHERE message_id = ANY($1)`, committed); n != 3 {
		t.Errorf("%d rows of a committed transaction, want 3", n)
	}
	r, err := relay.New(pool, relay.Config{})
	if err != nil {
		t.Fatal(err)
	}
	res, err := r.Drain(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Claimed != 3 || res.Delivered != 3 {
		t.Errorf("relay moved %+v, want 3 claimed and delivered", res)
	}
	if d := pgtest.Depths(t, ctx, pool, "billing"); d.Ready != 3 {
		t.Errorf("billing has %+v, want 3 ready", d)
	}
}

// Bad input is a *postbox.ValidationError naming the field, as for the
// pgx producers, and a batch writes nothing unless every message is good.
func TestSQLValidation(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	sdb := sqlDB(t, pool)
	small := outbox.Outbox{Limits: postbox.Limits{MaxPayloadBytes: 4}}
	reused := &postbox.Message{ID: postbox.NewID(), Topic: "order.created"}

	tests := []struct {
		name  string
		write func(tx *sql.Tx) error
		field string
	}{
		{"nil message", func(tx *sql.Tx) error { return outbox.PublishSQL(ctx, tx, nil) }, "msg"},
		{"bad topic", func(tx *sql.Tx) error {
			return outbox.PublishSQL(ctx, tx, &postbox.Message{Topic: "Order Created"})
		}, "Message.Topic"},
		{"bad queue", func(tx *sql.Tx) error { return outbox.SendSQL(ctx, tx, &postbox.Message{Topic: ""}) }, "Message.Topic"},
		{"bad header", func(tx *sql.Tx) error {
			return outbox.PublishSQL(ctx, tx, &postbox.Message{Topic: "a", Headers: map[string]string{"no spaces": "x"}})
		}, "Message.Headers"},
		{"payload over the limit", func(tx *sql.Tx) error {
			return small.SendSQL(ctx, tx, &postbox.Message{Topic: "a", Payload: []byte("12345")})
		}, "Message.Payload"},
		{"batch with a bad message last", func(tx *sql.Tx) error {
			return outbox.PublishBatchSQL(ctx, tx, []*postbox.Message{{Topic: "a"}, {Topic: "a", Key: "k"}, {Topic: "-a"}})
		}, "msgs[2].Topic"},
		{"batch with one message twice", func(tx *sql.Tx) error {
			return outbox.SendBatchSQL(ctx, tx, []*postbox.Message{reused, {Topic: "b"}, reused})
		}, "msgs[2].ID"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tx, err := sdb.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			err = tt.write(tx)
			var verr *postbox.ValidationError
			if !errors.As(err, &verr) || !errors.Is(err, postbox.ErrInvalid) {
				t.Fatalf("error %v, want a *postbox.ValidationError", err)
			}
			if verr.Field != tt.field {
				t.Errorf("field %q (%v), want %q", verr.Field, err, tt.field)
			}
			// Nothing was written, and the transaction is still usable.
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM postbox.outbox`).Scan(&n); err != nil || n != 0 {
				t.Errorf("outbox rows after the error: %d (%v), want 0", n, err)
			}
		})
	}
}

// Keyed messages take the producer's per-key lock in the transaction, as
// Publish does, so per key the outbox ids follow the commit order.
func TestSQLTakesTheKeyLocks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	sdb := sqlDB(t, pool)

	tests := []struct {
		name  string
		write func(tx *sql.Tx) error
		keys  []string
	}{
		{"PublishSQL", func(tx *sql.Tx) error {
			return outbox.PublishSQL(ctx, tx, &postbox.Message{Topic: "a", Key: "k-1"})
		}, []string{"k-1"}},
		{"SendBatchSQL", func(tx *sql.Tx) error {
			return outbox.SendBatchSQL(ctx, tx, []*postbox.Message{{Topic: "q", Key: "k-2"}, {Topic: "q"}, {Topic: "q", Key: "k-3"}, {Topic: "q", Key: "k-2"}})
		}, []string{"k-2", "k-3"}},
		{"PublishBatchSQL without keys", func(tx *sql.Tx) error {
			return outbox.PublishBatchSQL(ctx, tx, []*postbox.Message{{Topic: "a"}, {Topic: "a"}})
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tx, err := sdb.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			if err := tt.write(tx); err != nil {
				t.Fatal(err)
			}
			rows, err := tx.QueryContext(ctx, `SELECT objid::bigint FROM pg_locks
				WHERE locktype = 'advisory' AND classid = 1886352245 AND pid = pg_backend_pid() ORDER BY 1`)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for rows.Next() {
				var h int64
				if err := rows.Scan(&h); err != nil {
					t.Fatal(err)
				}
				got = append(got, fmt.Sprint(h))
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			want := map[string]bool{}
			for _, k := range tt.keys {
				want[fmt.Sprint(murmur2.Positive([]byte(k)))] = true
			}
			if len(got) != len(want) {
				t.Fatalf("key locks held: %s, want those of %v", strings.Join(got, ","), tt.keys)
			}
			for _, h := range got {
				if !want[h] {
					t.Errorf("lock on hash %s, want those of %v", h, tt.keys)
				}
			}
		})
	}
}
