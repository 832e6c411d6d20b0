package outbox

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/internal/db"
	"github.com/postbox-dev/postbox/internal/headers"
	"github.com/postbox-dev/postbox/internal/invalid"
	"github.com/postbox-dev/postbox/internal/murmur2"
)

// Outbox writes messages with configured limits. The zero value uses the
// default limits; so do the package-level Publish, Send and PublishBatch.
type Outbox struct {
	Limits postbox.Limits
}

var defaultOutbox Outbox

// Publish writes msg for topic msg.Topic through db, normally the caller's
// transaction: the message exists if and only if that transaction commits.
// An empty msg.ID is filled with a new UUIDv7 and stays in msg.
//
// The ID is the message's identity: subscribers handle an ID once. So do
// not reuse a *Message for another message — after the first Publish it
// carries that message's ID, and later ones would be dropped as duplicates
// (counted in relay.Stats.Duplicates).
func Publish(ctx context.Context, db postbox.DBTX, msg *postbox.Message) error {
	return defaultOutbox.Publish(ctx, db, msg)
}

// Send writes msg point-to-point to the queue named msg.Topic: exactly one
// consumer of that queue handles it. A send to a queue that is not declared
// when the relay moves it becomes a dead letter with reason "no-route".
func Send(ctx context.Context, db postbox.DBTX, msg *postbox.Message) error {
	return defaultOutbox.Send(ctx, db, msg)
}

// PublishBatch writes many topic messages with one COPY. Each message's
// Topic names its topic; see Publish.
func PublishBatch(ctx context.Context, db postbox.DBTX, msgs []*postbox.Message) error {
	return defaultOutbox.PublishBatch(ctx, db, msgs)
}

// SendBatch writes many queue messages with one COPY. Each message's Topic
// names its queue; see Send.
func SendBatch(ctx context.Context, db postbox.DBTX, msgs []*postbox.Message) error {
	return defaultOutbox.SendBatch(ctx, db, msgs)
}

// Publish is the package-level Publish with o's limits.
func (o Outbox) Publish(ctx context.Context, dbtx postbox.DBTX, msg *postbox.Message) error {
	return o.insert(ctx, dbtx, msg, false)
}

// Send is the package-level Send with o's limits.
func (o Outbox) Send(ctx context.Context, dbtx postbox.DBTX, msg *postbox.Message) error {
	return o.insert(ctx, dbtx, msg, true)
}

func (o Outbox) insert(ctx context.Context, dbtx postbox.DBTX, msg *postbox.Message, queue bool) error {
	r, err := o.prepare(ctx, msg, queue)
	if err != nil {
		return err
	}
	slot := slotAt(time.Now())
	sql := insertSQL[slot]
	if r.Key != nil {
		sql = insertKeyedSQL[slot]
	}
	if _, err := dbtx.Exec(ctx, sql, r.MessageID, r.KeyHash, r.IsQueue, r.Topic, r.Type, r.Key,
		r.Payload, r.Headers, r.DeliverAt); err != nil {
		return fmt.Errorf("outbox: insert message %s: %w", msg.ID, err)
	}
	return nil
}

// PublishBatch is the package-level PublishBatch with o's limits. Every
// message is validated before any is written.
func (o Outbox) PublishBatch(ctx context.Context, dbtx postbox.DBTX, msgs []*postbox.Message) error {
	return o.copy(ctx, dbtx, msgs, false)
}

// SendBatch is the package-level SendBatch with o's limits. Every message
// is validated before any is written.
func (o Outbox) SendBatch(ctx context.Context, dbtx postbox.DBTX, msgs []*postbox.Message) error {
	return o.copy(ctx, dbtx, msgs, true)
}

func (o Outbox) copy(ctx context.Context, dbtx postbox.DBTX, msgs []*postbox.Message, queue bool) error {
	rows, keyHashes, err := o.prepareBatch(ctx, msgs, queue)
	if err != nil {
		return err
	}
	if len(keyHashes) > 0 {
		// Per-key order, as for Publish: the keys' locks (sorted, in one
		// statement) before COPY draws the ids.
		if err := db.New(dbtx).LockKeys(ctx, keyHashes); err != nil {
			return fmt.Errorf("outbox: lock keys: %w", err)
		}
	}
	slot := slotAt(time.Now())
	n, err := dbtx.CopyFrom(ctx, slotTable[slot], copyColumns, &copySource{rows: rows, slot: int16(slot)})
	if err != nil {
		return fmt.Errorf("outbox: copy %d messages: %w", len(msgs), err)
	}
	if n != int64(len(msgs)) {
		return fmt.Errorf("outbox: copy wrote %d of %d messages", n, len(msgs))
	}
	return nil
}

// prepareBatch prepares every message of a batch before any is written and
// returns their rows and the hashes of the keys among them.
func (o Outbox) prepareBatch(ctx context.Context, msgs []*postbox.Message, queue bool) ([]row, []int32, error) {
	rows := make([]row, len(msgs))
	seen := make(map[uuid.UUID]int, len(msgs))
	var keyHashes []int32
	for i, msg := range msgs {
		r, err := o.prepare(ctx, msg, queue)
		if err != nil {
			return nil, nil, inBatch(err, i)
		}
		// The same ID twice in one batch is one message twice: almost
		// certainly a reused *Message, and all but one copy would be dropped.
		if j, dup := seen[msg.ID]; dup {
			return nil, nil, invalid.Errorf(fmt.Sprintf("msgs[%d].ID", i), "%s is also msgs[%d].ID", msg.ID, j)
		}
		seen[msg.ID] = i
		rows[i] = r
		if r.Key != nil {
			keyHashes = append(keyHashes, r.KeyHash)
		}
	}
	return rows, keyHashes, nil
}

// inBatch names msgs[i] instead of Message (or msg) in a validation error
// of the i-th message of a batch; other errors pass unchanged.
func inBatch(err error, i int) error {
	var ve *postbox.ValidationError
	if !errors.As(err, &ve) {
		return err
	}
	field := strings.TrimPrefix(strings.TrimPrefix(ve.Field, "Message"), "msg")
	return &postbox.ValidationError{Field: fmt.Sprintf("msgs[%d]", i) + field, Reason: ve.Reason}
}

// row is the outbox row for one message.
type row struct {
	MessageID pgtype.UUID
	KeyHash   int32
	IsQueue   bool
	Topic     string
	Type      string
	Key       *string
	Payload   []byte
	Headers   []byte
	DeliverAt *time.Time
}

// prepare validates msg, fills its ID and its correlation headers, and
// builds its row.
func (o Outbox) prepare(ctx context.Context, msg *postbox.Message, queue bool) (row, error) {
	if msg == nil {
		return row{}, invalid.Nil("msg")
	}
	if err := postbox.ValidateName("Message.Topic", msg.Topic); err != nil {
		return row{}, err
	}
	if err := o.Limits.Validate(msg); err != nil {
		return row{}, err
	}
	if msg.ID == uuid.Nil {
		msg.ID = postbox.NewID()
	}
	if cause := postbox.CauseFrom(ctx); cause != nil {
		correlate(msg, cause)
		if err := o.Limits.Validate(msg); err != nil {
			return row{}, err
		}
	}
	r := row{
		MessageID: pgtype.UUID{Bytes: msg.ID, Valid: true},
		IsQueue:   queue,
		Topic:     msg.Topic,
		Type:      msg.Type,
		Payload:   msg.Payload,
	}
	if r.Payload == nil {
		r.Payload = []byte{}
	}
	if msg.Key != "" {
		key := msg.Key
		r.Key = &key
		r.KeyHash = murmur2.Positive([]byte(key))
	} else {
		r.KeyHash = murmur2.Positive(msg.ID[:])
	}
	h, err := headers.Encode(msg.Headers)
	if err != nil {
		return row{}, fmt.Errorf("outbox: encode headers: %w", err)
	}
	r.Headers = h
	if !msg.DeliverAt.IsZero() {
		at := msg.DeliverAt
		r.DeliverAt = &at
	}
	return r, nil
}

// copySource feeds rows to CopyFrom in copyColumns' order.
type copySource struct {
	rows []row
	slot int16
	at   int
}

func (c *copySource) Next() bool {
	c.at++
	return c.at <= len(c.rows)
}

func (c *copySource) Values() ([]any, error) {
	r := &c.rows[c.at-1]
	return []any{c.slot, r.MessageID, r.KeyHash, r.IsQueue, r.Topic, r.Type, r.Key, r.Payload, r.Headers, r.DeliverAt}, nil
}

func (c *copySource) Err() error { return nil }

// correlate carries the conversation from cause to msg: msg gets cause's
// correlation ID and names cause as its causation, unless msg sets them.
func correlate(msg, cause *postbox.Message) {
	_, hasCorrelation := msg.Headers[postbox.HeaderCorrelationID]
	_, hasCausation := msg.Headers[postbox.HeaderCausationID]
	if hasCorrelation && hasCausation {
		return
	}
	h := make(map[string]string, len(msg.Headers)+2)
	for k, v := range msg.Headers {
		h[k] = v
	}
	if !hasCorrelation {
		h[postbox.HeaderCorrelationID] = cause.CorrelationID()
	}
	if !hasCausation {
		h[postbox.HeaderCausationID] = cause.ID.String()
	}
	msg.Headers = h
}

// Notify wakes relays that LISTEN (relay.Config.Listen) as soon as db's
// transaction commits, instead of at their next poll. It is opt-in: a
// NOTIFY takes a database-wide lock at commit, which serializes all
// notifying commits, so call it only where latency matters more than
// producer throughput. Polling alone never loses a message.
func Notify(ctx context.Context, dbtx postbox.DBTX) error {
	if err := db.New(dbtx).NotifyRelay(ctx); err != nil {
		return fmt.Errorf("outbox: notify: %w", err)
	}
	return nil
}
