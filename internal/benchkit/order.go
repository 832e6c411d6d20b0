package benchkit

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/internal/murmur2"
)

// Order is the event every workload sends: an order of about 90 bytes of
// JSON, as a service would send it (River's peers send it as job
// arguments).
type Order struct {
	Seq      int    `json:"seq"`
	Customer string `json:"customer"`
	Amount   int64  `json:"amount_cents"`
	Currency string `json:"currency"`
}

// NewOrder is order i.
func NewOrder(i int) Order {
	return Order{Seq: i, Customer: "c-" + strconv.Itoa(i%1000), Amount: 1000 + int64(i%9000), Currency: "EUR"}
}

var headers = map[string]string{postbox.HeaderContentType: "application/json"}

// NewMessage is order i as a message on topic (or to the queue of that
// name), with a content-type header; keys > 0 gives it one of keys
// partition keys.
func NewMessage(i int, topic string, keys int) (*postbox.Message, Order) {
	o := NewOrder(i)
	payload, err := json.Marshal(o)
	if err != nil {
		panic(err) // a fixed struct of strings and ints always marshals
	}
	m := &postbox.Message{Topic: topic, Type: "order.created", Payload: payload, Headers: headers}
	if keys > 0 {
		m.Key = "customer-" + strconv.Itoa(i%keys)
	}
	return m, o
}

// RawColumns are the columns of a raw outbox row (RawRow), for COPY.
var RawColumns = []string{"message_id", "key_hash", "topic", "type", "key", "payload", "headers"}

// RawRow is the hand-written equivalent of what outbox.Publish writes for
// m, in the order of RawColumns: the same columns, computed the same way.
// It gives m an ID if it has none.
func RawRow(m *postbox.Message) ([]any, error) {
	if m.ID == uuid.Nil {
		m.ID = postbox.NewID()
	}
	var key *string
	hash := murmur2.Positive(m.ID[:])
	if m.Key != "" {
		key = &m.Key
		hash = murmur2.Positive([]byte(m.Key))
	}
	h, err := json.Marshal(m.Headers)
	if err != nil {
		return nil, err
	}
	return []any{m.ID, hash, m.Topic, m.Type, key, m.Payload, h}, nil
}

// RawRows are the raw rows of messages first to first+size-1 (see
// NewMessage), for a COPY.
func RawRows(first, size int, topic string, keys int) ([][]any, error) {
	rows := make([][]any, size)
	for j := range rows {
		msg, _ := NewMessage(first+j, topic, keys)
		row, err := RawRow(msg)
		if err != nil {
			return nil, err
		}
		rows[j] = row
	}
	return rows, nil
}

// Tables are a program's own tables, in a schema of its own, outside the
// product's migrations (so sqlc, which compiles against those, cannot check
// these statements; they are built from constants, never from input):
// orders, the business rows producers write; raw_outbox, with the columns
// of postbox.outbox and, like it, only a primary key, what a hand-written
// outbox would be; effects, one row per handled message.
type Tables struct {
	Setup        string // creates the schema and the tables
	Truncate     string // empties them (and the others of NewTables), restarting their identities
	InsertOrder  string // $1 customer, $2 amount_cents
	InsertRaw    string // a raw outbox row, RawColumns as $1 to $7
	InsertEffect string // $1 subscriber, $2 message ID
	CountEffects string // effect rows, and distinct (subscriber, message ID) pairs
	RawOutbox    pgx.Identifier
}

// NewTables returns the statements of the tables in schema; Truncate also
// empties others (qualified table names).
func NewTables(schema string, others ...string) Tables {
	s := pgx.Identifier{schema}.Sanitize()
	q := func(sql string) string { return strings.ReplaceAll(sql, "{schema}", s) }
	truncate := []string{s + ".orders", s + ".raw_outbox", s + ".effects"}
	return Tables{
		Setup: q(`
CREATE SCHEMA IF NOT EXISTS {schema};
CREATE TABLE IF NOT EXISTS {schema}.orders (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer     text        NOT NULL,
    amount_cents bigint      NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {schema}.raw_outbox (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id uuid        NOT NULL,
    key_hash   integer     NOT NULL,
    is_queue   boolean     NOT NULL DEFAULT false,
    topic      text        NOT NULL,
    type       text        NOT NULL DEFAULT '',
    key        text,
    payload    bytea       NOT NULL,
    headers    jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    deliver_at timestamptz
);
CREATE TABLE IF NOT EXISTS {schema}.effects (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscriber text        NOT NULL,
    message_id text        NOT NULL,
    handled_at timestamptz NOT NULL DEFAULT now()
);`),
		Truncate:     "TRUNCATE " + strings.Join(append(truncate, others...), ", ") + " RESTART IDENTITY",
		InsertOrder:  q(`INSERT INTO {schema}.orders (customer, amount_cents) VALUES ($1, $2)`),
		InsertRaw:    q(`INSERT INTO {schema}.raw_outbox (` + strings.Join(RawColumns, ", ") + `) VALUES ($1, $2, $3, $4, $5, $6, $7)`),
		InsertEffect: q(`INSERT INTO {schema}.effects (subscriber, message_id) VALUES ($1, $2)`),
		CountEffects: q(`SELECT count(*), count(DISTINCT (subscriber, message_id)) FROM {schema}.effects`),
		RawOutbox:    pgx.Identifier{schema, "raw_outbox"},
	}
}

// CheckEffects fails unless the effects table holds exactly want rows, one
// per (subscriber, message): every message handled, and none twice.
func (t Tables) CheckEffects(ctx context.Context, db *pgxpool.Pool, want int64) error {
	var rows, distinct int64
	if err := db.QueryRow(ctx, t.CountEffects).Scan(&rows, &distinct); err != nil {
		return fmt.Errorf("count effects: %w", err)
	}
	if rows != want || distinct != want {
		return fmt.Errorf("effect rows: %d (%d distinct), want exactly %d", rows, distinct, want)
	}
	return nil
}
