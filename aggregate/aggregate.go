package aggregate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/db"
	"github.com/postbox-dev/postbox/internal/headers"
	"github.com/postbox-dev/postbox/internal/invalid"
	"github.com/postbox-dev/postbox/outbox"
)

// Errors callers branch on.
var (
	// ErrExists: Open was given a key the aggregator has already (open,
	// or completed within its Retention).
	ErrExists = errors.New("aggregate: an aggregate of that key exists")
	// ErrNotFound: State was asked for a key the aggregator does not have.
	ErrNotFound = errors.New("aggregate: no aggregate of that key")
)

// Config configures an Aggregator. Zero values mean the defaults. At least
// one completion rule (Count, Predicate, Timeout) must be set.
type Config struct {
	// Name names the aggregator: its state is kept under it, so two
	// aggregators with different names never mix parts. Required; it must
	// match postbox.NamePattern.
	Name string
	// Key is the aggregate a part belongs to. Default: the delivery's
	// correlation-id (its ID when it has none). At most 1024 bytes; a part
	// without one is a permanent error.
	Key func(d *inbox.Delivery) string
	// PartID tells parts apart: parts with the same ID are one part, stored
	// once, whichever copy comes first. Default: the message ID, so a
	// redelivered part counts once. At most 1024 bytes.
	PartID func(d *inbox.Delivery) string
	// Count completes an aggregate once it has this many distinct parts;
	// Open may set another count per aggregate. 0: no count rule.
	Count int
	// Predicate completes an aggregate when it returns true; it sees every
	// part received so far (each new part reads them all from the
	// database, so keep predicate aggregates small).
	Predicate func(a *Aggregate) bool
	// Timeout completes an aggregate with what it has this long after it
	// began (its first part, or Open), when Sweep next runs. 0: no timeout,
	// unless Open sets a deadline.
	Timeout time.Duration
	// Build makes the aggregate message from a complete aggregate, or
	// returns nil to complete it without one. Required. An error fails the
	// part's delivery (it is retried, as any handler failure) or, in Sweep,
	// leaves the aggregate open for the next sweep.
	Build func(a *Aggregate) (*postbox.Message, error)
	// Deliver writes the aggregate message through the transaction that
	// completes the aggregate. Default outbox.Publish; outbox.Send sends it
	// to a queue.
	Deliver func(ctx context.Context, db postbox.DBTX, msg *postbox.Message) error
	// Late handles a part that comes after its aggregate completed (a
	// straggler, or a redelivery after the dedup window), in the part's
	// transaction. Nil: the part is counted (State.LateParts) and dropped.
	// A handler that returns postbox.Permanent makes it a dead letter.
	Late inbox.Handler
	// Retention is how long a completed aggregate is remembered, so that
	// its late parts are recognised instead of starting it anew. Default 7
	// days, postbox's dedup window.
	Retention time.Duration
	// SweepInterval is how often Run sweeps. Default 1s.
	SweepInterval time.Duration
	// Logger receives Run's failures. Default: silent.
	Logger *slog.Logger
}

// Defaults.
const (
	DefaultRetention     = 7 * 24 * time.Hour
	DefaultSweepInterval = time.Second
	// MaxKeyBytes bounds keys and part IDs (they are indexed).
	MaxKeyBytes = 1024
	// sweepBatch is the most due aggregates one Sweep transaction completes.
	sweepBatch = 100
)

func (c Config) withDefaults() (Config, error) {
	if c.Key == nil {
		c.Key = func(d *inbox.Delivery) string { return d.CorrelationID() }
	}
	if c.PartID == nil {
		c.PartID = func(d *inbox.Delivery) string { return d.ID.String() }
	}
	if c.Deliver == nil {
		c.Deliver = outbox.Publish
	}
	if c.Retention == 0 {
		c.Retention = DefaultRetention
	}
	if c.SweepInterval == 0 {
		c.SweepInterval = DefaultSweepInterval
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if err := postbox.ValidateName("Config.Name", c.Name); err != nil {
		return c, err
	}
	switch {
	case c.Build == nil:
		return c, invalid.Errorf("Config.Build", "nil: it makes the aggregate message")
	case c.Count < 0:
		return c, invalid.Errorf("Config.Count", "%d is negative", c.Count)
	case c.Timeout < 0:
		return c, invalid.Errorf("Config.Timeout", "%s is negative", c.Timeout)
	case c.Count == 0 && c.Predicate == nil && c.Timeout == 0:
		return c, invalid.Errorf("Config.Count", "no completion rule: set Count, Predicate or Timeout")
	case c.Retention < 0:
		return c, invalid.Errorf("Config.Retention", "%s is negative", c.Retention)
	case c.SweepInterval < 0:
		return c, invalid.Errorf("Config.SweepInterval", "%s is negative", c.SweepInterval)
	}
	return c, nil
}

// Aggregate is what Build and Predicate see: the parts of one key.
type Aggregate struct {
	Aggregator string
	Key        string
	// Parts are the distinct parts received, sorted by their ID, so the
	// aggregate does not depend on the order they arrived in.
	Parts []Part
	// Expected is the count that completes it (Open's, else Config.Count);
	// 0 when none does.
	Expected int
	// CreatedAt is when the aggregate began; Deadline when a sweep
	// completes it (zero: never).
	CreatedAt, Deadline time.Time
	// TimedOut is set when Sweep completes it at its deadline, with what
	// arrived.
	TimedOut bool
}

// Part is one message of an aggregate.
type Part struct {
	// ID is the part's Config.PartID.
	ID string
	postbox.Message
	// ReceivedAt is when the aggregator stored the part.
	ReceivedAt time.Time
}

// State is an aggregate's bookkeeping, for tests and operators.
type State struct {
	Key             string
	Expected, Parts int
	LateParts       int
	CreatedAt       time.Time
	Deadline        time.Time // zero: none
	CompletedAt     time.Time // zero: open
	TimedOut        bool
	ResultID        uuid.UUID // the aggregate message's ID; zero if none
}

// Completed reports whether the aggregate is complete.
func (s State) Completed() bool { return !s.CompletedAt.IsZero() }

// Aggregator collects parts into aggregates kept in PostgreSQL. It is an
// inbox.Handler: run it as (or inside) the handler of the consumer of the
// subscriber the parts arrive at.
type Aggregator struct {
	cfg Config
}

// New returns an aggregator. It touches no database; its tables come with
// schema.Migrate.
func New(cfg Config) (*Aggregator, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Aggregator{cfg: cfg}, nil
}

// Name is the aggregator's name.
func (a *Aggregator) Name() string { return a.cfg.Name }

// resultNamespace derives aggregate message IDs (UUIDv5).
var resultNamespace = uuid.MustParse("0b6f1f55-2c3e-4a8d-9e71-5d2c8a4b7e10")

// ResultID is the ID the aggregate message of (aggregator, key) gets unless
// Build sets one: derived from the aggregate, so a completion can never
// publish two different messages for it. The aggregate's creation time
// takes part, so a key reused after its tombstone was forgotten gets a new
// ID.
func ResultID(aggregator, key string, createdAt time.Time) uuid.UUID {
	return uuid.NewSHA1(resultNamespace, fmt.Appendf(nil, "%s\x00%s\x00%d", aggregator, key, createdAt.UnixMicro()))
}

// Handle adds the delivery to its aggregate, through tx, and completes the
// aggregate when a rule says so: it publishes the aggregate message through
// tx (Config.Deliver) and marks the aggregate complete, so the part's
// handling, the aggregate message and the completion commit together or
// not at all. Parts of one key wait for each other on the aggregate's row
// lock; give parts their aggregate's key as message Key (scatter-gather
// does) and the consumer hands them over one at a time instead.
func (a *Aggregator) Handle(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	key, partID := a.cfg.Key(d), a.cfg.PartID(d)
	if err := checkKey("Config.Key", key); err != nil {
		return postbox.Permanent(fmt.Errorf("aggregate %s: part %s: %w", a.cfg.Name, d.ID, err))
	}
	if err := checkKey("Config.PartID", partID); err != nil {
		return postbox.Permanent(fmt.Errorf("aggregate %s: part %s: %w", a.cfg.Name, d.ID, err))
	}
	q := db.New(tx)
	st, err := q.LockAggregate(ctx, db.LockAggregateParams{Aggregator: a.cfg.Name, Key: key,
		TimeoutMs: a.cfg.Timeout.Milliseconds()})
	if err != nil {
		return fmt.Errorf("aggregate %s: lock %q: %w", a.cfg.Name, key, err)
	}
	if st.CompletedAt != nil {
		return a.late(ctx, tx, q, key, d)
	}
	h, err := headers.Encode(d.Headers)
	if err != nil {
		return fmt.Errorf("aggregate %s: part %s: %w", a.cfg.Name, d.ID, err)
	}
	var msgKey *string
	if d.Key != "" {
		msgKey = &d.Key
	}
	added, err := q.AddPart(ctx, db.AddPartParams{Aggregator: a.cfg.Name, Key: key, PartID: partID,
		MessageID: d.ID, Topic: d.Topic, Type: d.Type, MessageKey: msgKey, Payload: orEmpty(d.Payload),
		Headers: h, CreatedAt: createdAt(d)})
	if err != nil {
		return fmt.Errorf("aggregate %s: add part %s to %q: %w", a.cfg.Name, d.ID, key, err)
	}
	if !added.Added {
		return nil // this part is in already
	}
	agg := &Aggregate{Aggregator: a.cfg.Name, Key: key, Expected: a.cfg.Count, CreatedAt: st.CreatedAt}
	if st.Expected != nil {
		agg.Expected = int(*st.Expected)
	}
	if st.Deadline != nil {
		agg.Deadline = *st.Deadline
	}
	complete := agg.Expected > 0 && int(added.Parts) >= agg.Expected
	if !complete && a.cfg.Predicate == nil {
		return nil
	}
	if err := a.loadParts(ctx, q, agg); err != nil {
		return err
	}
	if !complete && !a.cfg.Predicate(agg) {
		return nil
	}
	return a.complete(ctx, tx, agg)
}

// late handles a part of a completed aggregate.
func (a *Aggregator) late(ctx context.Context, tx pgx.Tx, q *db.Queries, key string, d *inbox.Delivery) error {
	if err := q.CountLatePart(ctx, db.CountLatePartParams{Aggregator: a.cfg.Name, Key: key}); err != nil {
		return fmt.Errorf("aggregate %s: count a late part of %q: %w", a.cfg.Name, key, err)
	}
	if a.cfg.Late != nil {
		return a.cfg.Late.Handle(ctx, tx, d)
	}
	return nil
}

func (a *Aggregator) loadParts(ctx context.Context, q *db.Queries, agg *Aggregate) error {
	rows, err := q.ListParts(ctx, db.ListPartsParams{Aggregator: agg.Aggregator, Key: agg.Key})
	if err != nil {
		return fmt.Errorf("aggregate %s: parts of %q: %w", agg.Aggregator, agg.Key, err)
	}
	agg.Parts = make([]Part, len(rows))
	for i, r := range rows {
		h, err := headers.Decode(r.Headers)
		if err != nil {
			return fmt.Errorf("aggregate %s: part %s of %q: %w", agg.Aggregator, r.PartID, agg.Key, err)
		}
		p := Part{ID: r.PartID, ReceivedAt: r.ReceivedAt, Message: postbox.Message{
			ID: r.MessageID, Topic: r.Topic, Type: r.Type, Payload: r.Payload, Headers: h, CreatedAt: r.CreatedAt}}
		if r.MessageKey != nil {
			p.Key = *r.MessageKey
		}
		agg.Parts[i] = p
	}
	return nil
}

// complete publishes the aggregate message, if Build makes one, and marks
// the (locked) aggregate complete, through tx.
func (a *Aggregator) complete(ctx context.Context, tx pgx.Tx, agg *Aggregate) error {
	msg, err := a.cfg.Build(agg)
	if err != nil {
		return fmt.Errorf("aggregate %s: build %q: %w", agg.Aggregator, agg.Key, err)
	}
	var result *uuid.UUID
	if msg != nil {
		if msg.ID == uuid.Nil {
			msg.ID = ResultID(agg.Aggregator, agg.Key, agg.CreatedAt)
		}
		if _, ok := msg.Headers[postbox.HeaderCorrelationID]; !ok {
			h := make(map[string]string, len(msg.Headers)+1)
			maps.Copy(h, msg.Headers)
			h[postbox.HeaderCorrelationID] = agg.Key
			msg.Headers = h
		}
		if err := a.cfg.Deliver(ctx, tx, msg); err != nil {
			return fmt.Errorf("aggregate %s: deliver %q: %w", agg.Aggregator, agg.Key, err)
		}
		result = &msg.ID
	}
	err = db.New(tx).CompleteAggregate(ctx, db.CompleteAggregateParams{TimedOut: agg.TimedOut,
		ResultID: result, Aggregator: agg.Aggregator, Key: agg.Key})
	if err != nil {
		return fmt.Errorf("aggregate %s: complete %q: %w", agg.Aggregator, agg.Key, err)
	}
	return nil
}

// OpenOptions are an aggregate's own completion rules, for Open.
type OpenOptions struct {
	// Expected completes the aggregate once it has this many distinct
	// parts, instead of Config.Count. 0: Config.Count.
	Expected int
	// Deadline is when Sweep completes it with what arrived. Zero: now +
	// Config.Timeout, or never without a Timeout.
	Deadline time.Time
}

// Open begins the aggregate of key before its first part, through db
// (normally the transaction that sends the requests the parts answer), so
// that it completes at its deadline even if no part ever comes. It returns
// ErrExists when the key has an aggregate already.
func (a *Aggregator) Open(ctx context.Context, dbtx postbox.DBTX, key string, o OpenOptions) error {
	if err := checkKey("key", key); err != nil {
		return err
	}
	if o.Expected < 0 {
		return invalid.Errorf("OpenOptions.Expected", "%d is negative", o.Expected)
	}
	p := db.OpenAggregateParams{Aggregator: a.cfg.Name, Key: key}
	if o.Expected > 0 {
		n := int32(o.Expected)
		p.Expected = &n
	}
	switch {
	case !o.Deadline.IsZero():
		p.Deadline = &o.Deadline
	case a.cfg.Timeout > 0:
		dl := time.Now().Add(a.cfg.Timeout)
		p.Deadline = &dl
	}
	_, err := db.New(dbtx).OpenAggregate(ctx, p)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: %s %q", ErrExists, a.cfg.Name, key)
	}
	if err != nil {
		return fmt.Errorf("aggregate %s: open %q: %w", a.cfg.Name, key, err)
	}
	return nil
}

// State returns the bookkeeping of the aggregate of key.
func (a *Aggregator) State(ctx context.Context, dbtx postbox.DBTX, key string) (State, error) {
	r, err := db.New(dbtx).GetAggregate(ctx, db.GetAggregateParams{Aggregator: a.cfg.Name, Key: key})
	if errors.Is(err, pgx.ErrNoRows) {
		return State{}, fmt.Errorf("%w: %s %q", ErrNotFound, a.cfg.Name, key)
	}
	if err != nil {
		return State{}, fmt.Errorf("aggregate %s: state of %q: %w", a.cfg.Name, key, err)
	}
	s := State{Key: r.Key, Parts: int(r.Parts), LateParts: int(r.LateParts), CreatedAt: r.CreatedAt,
		TimedOut: r.TimedOut, Expected: a.cfg.Count}
	if r.Expected != nil {
		s.Expected = int(*r.Expected)
	}
	if r.Deadline != nil {
		s.Deadline = *r.Deadline
	}
	if r.CompletedAt != nil {
		s.CompletedAt = *r.CompletedAt
	}
	if r.ResultID != nil {
		s.ResultID = *r.ResultID
	}
	return s, nil
}

func checkKey(field, s string) error {
	switch {
	case s == "":
		return invalid.Errorf(field, "empty")
	case len(s) > MaxKeyBytes:
		return invalid.Errorf(field, "%d bytes, more than %d", len(s), MaxKeyBytes)
	case !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0:
		return invalid.Errorf(field, "not valid UTF-8 text without NUL bytes")
	}
	return nil
}

func orEmpty(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// createdAt is the part's creation time, or now for a delivery that has
// none (HandleOnce of an outside message).
func createdAt(d *inbox.Delivery) time.Time {
	if d.CreatedAt.IsZero() {
		return time.Now()
	}
	return d.CreatedAt
}
