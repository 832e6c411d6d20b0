package dlq

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/internal/db"
	"github.com/postbox-dev/postbox/internal/headers"
	"github.com/postbox-dev/postbox/internal/invalid"
)

// ErrNotFound is returned by Get when the subscriber has no dead letter with
// that message ID (it never existed, was replayed, or was purged).
var ErrNotFound = errors.New("dlq: dead letter not found")

// Limits of Filter.Limit.
const (
	DefaultLimit = 100
	MaxLimit     = 10000
)

// maxTextBytes bounds Filter.Type and Filter.ErrorContains.
const maxTextBytes = 1024

// Relay is the subscriber of the dead letters the relay quarantined: outbox
// rows it could not move (a row the relay statement fails on, or a message
// a Sink refused again and again), with the error as LastError. No
// subscriber can have this name; replaying its letters puts them back into
// the outbox.
const Relay = "_relay"

// DeadLetter is one dead delivery: a message that exhausted its subscriber's
// attempts, was rejected as permanently invalid, was sent to a queue that
// did not exist (LastError "no-route", Subscriber the queue name), or an
// outbox row the relay quarantined (Subscriber Relay).
type DeadLetter struct {
	Subscriber string
	MessageID  uuid.UUID
	Topic      string
	Type       string
	Key        string
	Payload    []byte
	Headers    map[string]string
	// Attempts is how many times handling failed before the letter died.
	Attempts int
	// ReplayCount is how many times the letter was replayed before.
	ReplayCount int
	LastError   string
	CreatedAt   time.Time
	DeadAt      time.Time
}

// Filter selects dead letters. Every zero field means "any"; the fields
// that are set must all match.
type Filter struct {
	// Subscriber whose dead letters to select. Required by Replay, Purge and
	// Count; empty in List means every subscriber.
	Subscriber string
	// Type selects letters of exactly this message type.
	Type string
	// ErrorContains selects letters whose last error contains this text,
	// literally: '%' and '_' are not wildcards.
	ErrorContains string
	// Since and Until select letters that died in [Since, Until).
	Since, Until time.Time
	// IDs selects letters with one of these message IDs.
	IDs []uuid.UUID
	// Limit bounds how many letters one call returns or touches, oldest
	// dead first; zero means DefaultLimit, more than MaxLimit is invalid.
	// To replay or purge more, call again until the result is zero, with
	// Until set (e.g. to the time the first call started) so that letters
	// dying again meanwhile are not replayed round and round.
	Limit int
}

// params is a validated Filter in the shape of the generated queries.
type params struct {
	subscriber *string
	ids        []uuid.UUID
	errorLike  *string
	typeName   *string
	since      *time.Time
	until      *time.Time
	limit      int32
}

// check validates f; needSubscriber is true for the calls that write.
func (f Filter) check(needSubscriber bool) (params, error) {
	var p params
	if f.Subscriber != "" || needSubscriber {
		if err := checkSubscriber("Filter.Subscriber", f.Subscriber); err != nil {
			return p, err
		}
		s := f.Subscriber
		p.subscriber = &s
	}
	switch {
	case f.Limit < 0:
		return p, invalid.Errorf("Filter.Limit", "%d is negative", f.Limit)
	case f.Limit > MaxLimit:
		return p, invalid.Errorf("Filter.Limit", "%d is more than %d", f.Limit, MaxLimit)
	case f.Limit == 0:
		p.limit = DefaultLimit
	default:
		p.limit = int32(f.Limit)
	}
	if !f.Since.IsZero() && !f.Until.IsZero() && f.Since.After(f.Until) {
		return p, invalid.Errorf("Filter.Since", "%s is after Until %s",
			f.Since.Format(time.RFC3339Nano), f.Until.Format(time.RFC3339Nano))
	}
	if err := checkText("Filter.Type", f.Type); err != nil {
		return p, err
	}
	if err := checkText("Filter.ErrorContains", f.ErrorContains); err != nil {
		return p, err
	}
	if f.Type != "" {
		t := f.Type
		p.typeName = &t
	}
	if f.ErrorContains != "" {
		like := "%" + likeEscaper.Replace(f.ErrorContains) + "%"
		p.errorLike = &like
	}
	if !f.Since.IsZero() {
		t := f.Since
		p.since = &t
	}
	if !f.Until.IsZero() {
		t := f.Until
		p.until = &t
	}
	if len(f.IDs) > 0 {
		p.ids = f.IDs
	}
	return p, nil
}

// likeEscaper makes text match itself under LIKE's default escape '\'.
var likeEscaper = strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`)

// checkSubscriber accepts a subscriber name or Relay.
func checkSubscriber(field, name string) error {
	if name == Relay {
		return nil
	}
	return postbox.ValidateName(field, name)
}

func checkText(field, s string) error {
	switch {
	case len(s) > maxTextBytes:
		return invalid.Errorf(field, "%d bytes, more than %d", len(s), maxTextBytes)
	case !utf8.ValidString(s):
		return invalid.Errorf(field, "not valid UTF-8")
	case strings.IndexByte(s, 0) >= 0:
		return invalid.Errorf(field, "contains a NUL byte")
	}
	return nil
}

// List returns up to f.Limit dead letters matching f, oldest dead first.
// f.Subscriber may be empty to list every subscriber's.
func List(ctx context.Context, dbtx postbox.DBTX, f Filter) ([]DeadLetter, error) {
	p, err := f.check(false)
	if err != nil {
		return nil, err
	}
	rows, err := db.New(dbtx).ListDeadLetters(ctx, db.ListDeadLettersParams{
		Subscriber: p.subscriber,
		MessageIds: p.ids,
		ErrorLike:  p.errorLike,
		TypeName:   p.typeName,
		DeadSince:  p.since,
		DeadUntil:  p.until,
		MaxRows:    p.limit,
	})
	if err != nil {
		return nil, fmt.Errorf("dlq: list: %w", err)
	}
	out := make([]DeadLetter, 0, len(rows))
	for _, r := range rows {
		d, err := fromRow(db.GetDeadLetterRow(r))
		if err != nil {
			return nil, fmt.Errorf("dlq: list: %w", err)
		}
		out = append(out, d)
	}
	return out, nil
}

// Get returns the subscriber's dead letter with message ID id, or an error
// matching ErrNotFound.
func Get(ctx context.Context, dbtx postbox.DBTX, subscriber string, id uuid.UUID) (DeadLetter, error) {
	if err := checkSubscriber("subscriber", subscriber); err != nil {
		return DeadLetter{}, err
	}
	r, err := db.New(dbtx).GetDeadLetter(ctx, db.GetDeadLetterParams{Subscriber: subscriber, MessageID: id})
	if errors.Is(err, pgx.ErrNoRows) {
		return DeadLetter{}, fmt.Errorf("dlq: get %s/%s: %w", subscriber, id, ErrNotFound)
	}
	if err != nil {
		return DeadLetter{}, fmt.Errorf("dlq: get %s/%s: %w", subscriber, id, err)
	}
	d, err := fromRow(r)
	if err != nil {
		return DeadLetter{}, fmt.Errorf("dlq: get %s/%s: %w", subscriber, id, err)
	}
	return d, nil
}

// Replay makes up to f.Limit of f.Subscriber's dead letters matching f
// pending again, in their original order, and returns how many. Each gets
// its attempts reset to zero, its replay count raised by one, the headers
// x-replayed-at and x-replay-count, and a row in postbox.replays; it is
// handled before its key's later messages that are still pending, so a
// key keeps its order. A letter whose key has an earlier dead letter that f
// leaves behind is not replayed (Count says how many will be). Replay runs
// postbox.replay_dead_letters, so it does exactly what the SQL call does.
// Through a transaction, the replay commits with it. Letters of Relay and
// no-route letters go back into the outbox, for the relay to route anew.
func Replay(ctx context.Context, dbtx postbox.DBTX, f Filter) (int, error) {
	p, err := f.check(true)
	if err != nil {
		return 0, err
	}
	n, err := db.New(dbtx).ReplayDeadLetters(ctx, db.ReplayDeadLettersParams(p.forFunction()))
	if err != nil {
		return 0, fmt.Errorf("dlq: replay %s: %w", f.Subscriber, err)
	}
	return int(n), nil
}

// Purge deletes up to f.Limit of f.Subscriber's dead letters matching f,
// oldest dead first, and returns how many. It runs
// postbox.purge_dead_letters.
func Purge(ctx context.Context, dbtx postbox.DBTX, f Filter) (int, error) {
	p, err := f.check(true)
	if err != nil {
		return 0, err
	}
	n, err := db.New(dbtx).PurgeDeadLetters(ctx, db.PurgeDeadLettersParams(p.forFunction()))
	if err != nil {
		return 0, fmt.Errorf("dlq: purge %s: %w", f.Subscriber, err)
	}
	return int(n), nil
}

// Count returns how many dead letters Replay with f would replay now,
// without touching any: a dry run. f is validated as for Replay.
func Count(ctx context.Context, dbtx postbox.DBTX, f Filter) (int, error) {
	p, err := f.check(true)
	if err != nil {
		return 0, err
	}
	n, err := db.New(dbtx).CountReplayable(ctx, db.CountReplayableParams(p.forFunction()))
	if err != nil {
		return 0, fmt.Errorf("dlq: count %s: %w", f.Subscriber, err)
	}
	return int(n), nil
}

// CountPurge returns how many dead letters Purge with f would delete now,
// without deleting any: a dry run.
func CountPurge(ctx context.Context, dbtx postbox.DBTX, f Filter) (int, error) {
	p, err := f.check(true)
	if err != nil {
		return 0, err
	}
	n, err := db.New(dbtx).CountDeadLetters(ctx, db.CountDeadLettersParams(p.forFunction()))
	if err != nil {
		return 0, fmt.Errorf("dlq: count %s: %w", f.Subscriber, err)
	}
	return int(n), nil
}

// functionArgs are the arguments of replay_dead_letters and
// purge_dead_letters; the generated parameter structs of Replay, Purge and
// Count all convert from it, so the three cannot drift apart in Go.
type functionArgs struct {
	Subscriber string
	MessageIds []uuid.UUID
	ErrorLike  *string
	TypeName   *string
	DeadSince  *time.Time
	DeadUntil  *time.Time
	MaxRows    int32
}

// forFunction needs a subscriber: check(true) guarantees one.
func (p params) forFunction() functionArgs {
	return functionArgs{
		Subscriber: *p.subscriber,
		MessageIds: p.ids,
		ErrorLike:  p.errorLike,
		TypeName:   p.typeName,
		DeadSince:  p.since,
		DeadUntil:  p.until,
		MaxRows:    p.limit,
	}
}

func fromRow(r db.GetDeadLetterRow) (DeadLetter, error) {
	d := DeadLetter{
		Subscriber:  r.Subscriber,
		MessageID:   r.MessageID,
		Topic:       r.Topic,
		Type:        r.Type,
		Payload:     r.Payload,
		Attempts:    int(r.Attempts),
		ReplayCount: int(r.ReplayCount),
		CreatedAt:   r.CreatedAt,
		DeadAt:      r.DeadAt,
	}
	if r.Key != nil {
		d.Key = *r.Key
	}
	if r.LastError != nil {
		d.LastError = *r.LastError
	}
	h, err := headers.Decode(r.Headers)
	if err != nil {
		return DeadLetter{}, fmt.Errorf("message %s: headers: %w", r.MessageID, err)
	}
	d.Headers = h
	return d, nil
}
