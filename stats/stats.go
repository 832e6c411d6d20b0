package stats

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/internal/db"
	"github.com/postbox-dev/postbox/internal/invalid"
)

// Undeclared is the Kind of a name that is not a declared subscriber but
// has parked deliveries or dead letters: sends to a queue that does not
// exist (no-route), what a dropped subscriber left, and the relay's
// quarantine (dlq.Relay).
const Undeclared = "undeclared"

// Defaults of Options.
const (
	DefaultCap         = 5000
	DefaultRateWindow  = time.Minute
	DefaultRateCap     = 200_000
	DefaultRateTimeout = time.Second
	// DefaultMaxNames bounds the undeclared names listed.
	DefaultMaxNames = 1000
)

// orderPartitions is postbox.order_partitions(): a stream count's cap is
// spread over them.
const orderPartitions = 16

// Options bound the work of a read. Zero fields take the defaults.
type Options struct {
	// Cap is how many rows per subscriber and source (stream, parked, dead
	// letters) are counted exactly, and how many outbox rows; past it,
	// counts are estimates. Default 5000.
	Cap int
	// RateWindow is the window HandledPerMinute is measured over. Default
	// one minute.
	RateWindow time.Duration
	// RateCap bounds the handled rows read for the rates. Default 200,000.
	RateCap int
	// RateTimeout bounds the time spent reading the rates (a
	// statement_timeout): the BRIN index confines the read to the window's
	// block ranges, but reads ranges vacuum has not summarized yet whole.
	// On timeout the rates are left out (HandledExact false, rate 0).
	// Default 1s.
	RateTimeout time.Duration
}

func (o Options) withDefaults() (Options, error) {
	if o.Cap < 0 {
		return o, invalid.Errorf("Options.Cap", "%d is negative", o.Cap)
	}
	if o.RateWindow < 0 {
		return o, invalid.Errorf("Options.RateWindow", "%s is negative", o.RateWindow)
	}
	if o.RateCap < 0 {
		return o, invalid.Errorf("Options.RateCap", "%d is negative", o.RateCap)
	}
	if o.RateTimeout < 0 {
		return o, invalid.Errorf("Options.RateTimeout", "%s is negative", o.RateTimeout)
	}
	if o.RateTimeout == 0 {
		o.RateTimeout = DefaultRateTimeout
	}
	if o.Cap == 0 {
		o.Cap = DefaultCap
	}
	if o.RateWindow == 0 {
		o.RateWindow = DefaultRateWindow
	}
	if o.RateCap == 0 {
		o.RateCap = DefaultRateCap
	}
	o.Cap = min(o.Cap, math.MaxInt32/orderPartitions)
	o.RateCap = min(o.RateCap, math.MaxInt32)
	return o, nil
}

// Count is a number of rows: exact, or an estimate where counting stopped
// at the cap.
type Count struct {
	N int64 `json:"n"`
	// Exact is false when N is an estimate (never less than the cap).
	Exact bool `json:"exact"`
}

// String is N, with a "~" in front when it is an estimate.
func (c Count) String() string {
	if c.Exact {
		return strconv.FormatInt(c.N, 10)
	}
	return "~" + strconv.FormatInt(c.N, 10)
}

// Plus is the sum of two counts, exact when both are.
func (c Count) Plus(d Count) Count { return Count{N: c.N + d.N, Exact: c.Exact && d.Exact} }

func exact(n int64) Count { return Count{N: n, Exact: true} }

// Subscriber is one subscriber's backlog.
type Subscriber struct {
	Name string `json:"subscriber"`
	// Kind is dispatcher.KindQueue, dispatcher.KindTopic, or Undeclared.
	Kind string `json:"kind"`
	// Ready deliveries may be handled now.
	Ready Count `json:"ready"`
	// Waiting is InBackoff + Delayed + Blocked: pending deliveries that may
	// not be handled yet.
	Waiting Count `json:"waiting"`
	// InBackoff failed and wait for their next attempt.
	InBackoff Count `json:"in_backoff"`
	// Delayed wait for their DeliverAt (or, replayed, for their turn).
	Delayed Count `json:"delayed"`
	// Blocked wait behind their key's head (failing, delayed, or dead with
	// dispatcher.KeyParks).
	Blocked Count `json:"blocked"`
	// Dead letters (package dlq).
	Dead Count `json:"dead"`
	// OldestPending is when the oldest pending delivery (ready or waiting)
	// was enqueued, zero when there is none; Lag is its age by the
	// database's clock.
	OldestPending time.Time     `json:"oldest_pending,omitzero"`
	Lag           time.Duration `json:"lag_ns"`
	// LagExact is false when parked deliveries past the cap may hold an
	// older one.
	LagExact bool `json:"lag_exact"`
	// HandledPerMinute: deliveries handled per minute over
	// Options.RateWindow, a lower bound when HandledExact is false.
	HandledPerMinute float64 `json:"handled_per_minute"`
	HandledExact     bool    `json:"handled_exact"`
}

// Backlog is the outbox: messages committed and not yet relayed.
type Backlog struct {
	// Pending messages (committed, not yet relayed); Due those of them due
	// now (no DeliverAt, or past).
	Pending Count `json:"pending"`
	Due     Count `json:"due"`
	// Oldest is when the oldest pending message (the relay's next) was
	// created, zero when the outbox is empty; Age is its age.
	Oldest time.Time     `json:"oldest,omitzero"`
	Age    time.Duration `json:"age_ns"`
	// OldestDue is since when the oldest due message has been due (the
	// later of its creation and its DeliverAt); DueAge is its age. Due
	// messages pending long mean no relay is moving them.
	OldestDue time.Time     `json:"oldest_due,omitzero"`
	DueAge    time.Duration `json:"due_age_ns"`
	// Scheduled messages wait in postbox.scheduled for their DeliverAt (the
	// relay's Sink path).
	Scheduled Count `json:"scheduled"`
}

// Overview is everything Read reads, at one moment.
type Overview struct {
	// At is the database's clock when the figures were read.
	At          time.Time    `json:"at"`
	Subscribers []Subscriber `json:"subscribers"`
	Outbox      Backlog      `json:"outbox"`
}

// BlockedKey is a key whose head, its earliest pending delivery, is
// failing: in backoff after failed attempts, or (dispatcher.KeyParks)
// behind a dead letter. The key's later deliveries wait until it is
// handled, dead, replayed or purged.
type BlockedKey struct {
	Key string `json:"key"`
	// MessageID is the head's.
	MessageID uuid.UUID `json:"message_id"`
	// Attempts the head has failed.
	Attempts  int    `json:"attempts"`
	LastError string `json:"last_error"`
	// LastErrorAt is when the head (or the dead letter) last failed.
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// NextAttempt is when the head is tried again; zero while it waits
	// behind a dead letter.
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	// BehindDeadLetter: the key waits for a dead letter to be replayed or
	// purged (dispatcher.KeyParks); LastError is the letter's.
	BehindDeadLetter bool `json:"behind_dead_letter"`
	// Parked counts the key's parked deliveries, the head included.
	Parked Count `json:"parked"`
}

// Read returns every subscriber's backlog and the outbox's, with the default
// Options.
func Read(ctx context.Context, dbtx postbox.DBTX) (Overview, error) {
	return Options{}.Read(ctx, dbtx)
}

// Subscribers returns every subscriber's backlog, with the default Options.
func Subscribers(ctx context.Context, dbtx postbox.DBTX) ([]Subscriber, error) {
	return Options{}.Subscribers(ctx, dbtx)
}

// Outbox returns the outbox backlog, with the default Options.
func Outbox(ctx context.Context, dbtx postbox.DBTX) (Backlog, error) {
	return Options{}.Outbox(ctx, dbtx)
}

// Of returns one subscriber's backlog, with the default Options. A name
// with nothing is Undeclared with zero counts.
func Of(ctx context.Context, dbtx postbox.DBTX, name string) (Subscriber, error) {
	return Options{}.Of(ctx, dbtx, name)
}

// BlockedKeys returns up to limit of subscriber's blocked keys (default
// 20, at most 1000), most recently failing first, with the default Options.
func BlockedKeys(ctx context.Context, dbtx postbox.DBTX, subscriber string, limit int) ([]BlockedKey, error) {
	return Options{}.BlockedKeys(ctx, dbtx, subscriber, limit)
}

// Read returns every subscriber's backlog and the outbox's.
func (o Options) Read(ctx context.Context, dbtx postbox.DBTX) (Overview, error) {
	var ov Overview
	err := o.read(ctx, dbtx, func(r *reader) error {
		var err error
		ov.At = r.now
		if ov.Subscribers, err = r.subscribers(ctx, nil); err != nil {
			return err
		}
		ov.Outbox, err = r.outbox(ctx)
		return err
	})
	return ov, err
}

// Subscribers returns every subscriber's backlog, declared ones and
// Undeclared names that have parked deliveries or dead letters, by name.
func (o Options) Subscribers(ctx context.Context, dbtx postbox.DBTX) ([]Subscriber, error) {
	var subs []Subscriber
	err := o.read(ctx, dbtx, func(r *reader) error {
		var err error
		subs, err = r.subscribers(ctx, nil)
		return err
	})
	return subs, err
}

// Of returns one subscriber's backlog. A name with nothing is Undeclared
// with zero counts.
func (o Options) Of(ctx context.Context, dbtx postbox.DBTX, name string) (Subscriber, error) {
	var sub Subscriber
	err := o.read(ctx, dbtx, func(r *reader) error {
		subs, err := r.subscribers(ctx, &name)
		if err != nil {
			return err
		}
		sub = subs[0]
		return nil
	})
	return sub, err
}

// Outbox returns the outbox backlog.
func (o Options) Outbox(ctx context.Context, dbtx postbox.DBTX) (Backlog, error) {
	var b Backlog
	err := o.read(ctx, dbtx, func(r *reader) error {
		var err error
		b, err = r.outbox(ctx)
		return err
	})
	return b, err
}

// Limits of BlockedKeys.
const (
	DefaultBlockedKeys = 20
	MaxBlockedKeys     = 1000
	// BlockedKeysVisit bounds the keys with parked deliveries BlockedKeys
	// looks at, in key order.
	BlockedKeysVisit = 2000
)

// BlockedKeys returns up to limit of subscriber's blocked keys (0 means
// DefaultBlockedKeys), most recently failing first. It looks at the first
// BlockedKeysVisit keys with parked deliveries, in key order.
func (o Options) BlockedKeys(ctx context.Context, dbtx postbox.DBTX, subscriber string, limit int) ([]BlockedKey, error) {
	switch {
	case limit < 0 || limit > MaxBlockedKeys:
		return nil, invalid.Errorf("limit", "%d, want 0 to %d", limit, MaxBlockedKeys)
	case limit == 0:
		limit = DefaultBlockedKeys
	}
	var keys []BlockedKey
	err := o.read(ctx, dbtx, func(r *reader) error {
		rows, err := r.q.StatsBlockedKeys(ctx, db.StatsBlockedKeysParams{
			Subscriber: subscriber, MaxKeys: int32(limit), Visit: BlockedKeysVisit,
		})
		if err != nil {
			return fmt.Errorf("stats: blocked keys: %w", err)
		}
		keys = make([]BlockedKey, len(rows))
		for i, k := range rows {
			keys[i] = BlockedKey{
				Key: k.Key, MessageID: k.MessageID, Attempts: int(k.Attempts), LastError: k.LastError,
				BehindDeadLetter: k.BehindDeadLetter,
				Parked:           Count{N: k.Parked, Exact: k.Parked <= 1000},
			}
			if k.HasLastErrorAt {
				keys[i].LastErrorAt = k.LastErrorAt
			}
			if k.HasNextAttempt {
				keys[i].NextAttempt = k.NextAttemptAt
			}
		}
		return nil
	})
	return keys, err
}

// beginner is a DBTX that can run the statements in a transaction of
// their own (a pool, a connection; a pgx.Tx makes a savepoint).
type beginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// reader runs one read's statements.
type reader struct {
	opts Options
	q    *db.Queries
	now  time.Time
	tx   pgx.Tx // nil when the DBTX could not begin one
}

// read runs fn in a transaction with the planner on index paths when dbtx
// can begin one, and rolls it back.
func (o Options) read(ctx context.Context, dbtx postbox.DBTX, fn func(*reader) error) error {
	o, err := o.withDefaults()
	if err != nil {
		return err
	}
	r := &reader{opts: o, q: db.New(dbtx)}
	if b, ok := dbtx.(beginner); ok {
		tx, err := b.Begin(ctx)
		if err != nil {
			return fmt.Errorf("stats: begin: %w", err)
		}
		defer tx.Rollback(context.WithoutCancel(ctx))
		r.tx, r.q = tx, db.New(tx)
		err = r.q.StatsPlanner(ctx, db.StatsPlannerParams{Seqscan: "off", Bitmapscan: "off"})
		if err != nil {
			return fmt.Errorf("stats: planner settings: %w", err)
		}
	}
	if r.now, err = r.q.DatabaseNow(ctx); err != nil {
		return fmt.Errorf("stats: database clock: %w", err)
	}
	return fn(r)
}

// handled reads the handled deliveries of the rate window per subscriber,
// and whether the figures are complete: in a savepoint of their own with a
// statement_timeout and the BRIN index's bitmap scan allowed, when in a
// transaction.
func (r *reader) handled(ctx context.Context) ([]db.StatsHandledRow, bool, error) {
	params := db.StatsHandledParams{WindowSeconds: r.opts.RateWindow.Seconds(), Cap: int32(r.opts.RateCap)}
	if r.tx == nil {
		rows, err := r.q.StatsHandled(ctx, params)
		return rows, err == nil, err
	}
	sp, err := r.tx.Begin(ctx)
	if err != nil {
		return nil, false, fmt.Errorf("stats: savepoint: %w", err)
	}
	defer sp.Rollback(context.WithoutCancel(ctx)) // and the settings with it
	q := db.New(sp)
	timeout := strconv.FormatInt(max(1, r.opts.RateTimeout.Milliseconds()), 10)
	err = q.StatsPlanner(ctx, db.StatsPlannerParams{Seqscan: "off", Bitmapscan: "on", StatementTimeout: &timeout})
	if err != nil {
		return nil, false, fmt.Errorf("stats: planner settings: %w", err)
	}
	rows, err := q.StatsHandled(ctx, params)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "57014" && ctx.Err() == nil { // query_canceled: the timeout
		return nil, false, nil
	}
	return rows, err == nil, err
}

// age is now - t, or 0 for the zero time or a time ahead.
func (r *reader) age(t time.Time) time.Duration {
	if t.IsZero() || t.After(r.now) {
		return 0
	}
	return r.now.Sub(t)
}

// subscribers reads the backlog of every name, or of only *one.
func (r *reader) subscribers(ctx context.Context, one *string) ([]Subscriber, error) {
	limit := r.opts.Cap
	names, err := r.q.StatsNames(ctx, DefaultMaxNames)
	if err != nil {
		return nil, fmt.Errorf("stats: subscribers: %w", err)
	}
	subs := make([]Subscriber, 0, len(names))
	index := map[string]int{}
	for _, n := range names {
		if one != nil && n.Name != *one {
			continue
		}
		index[n.Name] = len(subs)
		subs = append(subs, Subscriber{Name: n.Name, Kind: n.Kind})
	}
	if one != nil && len(subs) == 0 {
		index[*one] = 0
		subs = append(subs, Subscriber{Name: *one, Kind: Undeclared})
	}
	list := make([]string, len(subs))
	for i, s := range subs {
		list[i] = s.Name
		subs[i].LagExact, subs[i].HandledExact = true, true
		for _, c := range []*Count{&subs[i].Ready, &subs[i].InBackoff, &subs[i].Delayed, &subs[i].Blocked, &subs[i].Dead} {
			*c = exact(0)
		}
	}
	oldest := func(s *Subscriber, t time.Time) {
		if s.OldestPending.IsZero() || t.Before(s.OldestPending) {
			s.OldestPending = t
		}
	}

	// The stream past each cursor.
	perPart := max(1, (limit+orderPartitions-1)/orderPartitions)
	stream, err := r.q.StatsStream(ctx, db.StatsStreamParams{PerPart: int32(perPart), Subscriber: one})
	if err != nil {
		return nil, fmt.Errorf("stats: stream backlog: %w", err)
	}
	for _, p := range stream {
		i, ok := index[p.Subscriber]
		if !ok {
			continue
		}
		s := &subs[i]
		total, delayed := streamCount(p, int64(perPart))
		s.Ready = s.Ready.Plus(Count{N: total.N - delayed.N, Exact: total.Exact})
		s.Delayed = s.Delayed.Plus(delayed)
		if p.HasOldest {
			oldest(s, p.Oldest)
		}
	}

	// Parked deliveries and dead letters.
	parked, err := r.q.StatsParked(ctx, db.StatsParkedParams{Names: list, Cap: int32(limit)})
	if err != nil {
		return nil, fmt.Errorf("stats: parked: %w", err)
	}
	dead, err := r.q.StatsDead(ctx, db.StatsDeadParams{Names: list, Cap: int32(limit)})
	if err != nil {
		return nil, fmt.Errorf("stats: dead letters: %w", err)
	}
	var est *estimates
	if anyAtCap(parked, dead, int64(limit)) {
		if est, err = r.estimates(ctx); err != nil {
			return nil, err
		}
	}
	for _, p := range parked {
		s := &subs[index[p.Subscriber]]
		delayed := p.N - p.Ready - p.Backoff - p.Blocked
		if p.N < int64(limit) {
			s.Ready = s.Ready.Plus(exact(p.Ready))
			s.InBackoff = s.InBackoff.Plus(exact(p.Backoff))
			s.Blocked = s.Blocked.Plus(exact(p.Blocked))
			s.Delayed = s.Delayed.Plus(exact(delayed))
		} else {
			total := est.of("parked", p.Subscriber, p.N)
			scale := func(n int64) Count { return Count{N: n * total / p.N} }
			s.Ready = s.Ready.Plus(scale(p.Ready))
			s.InBackoff = s.InBackoff.Plus(scale(p.Backoff))
			s.Blocked = s.Blocked.Plus(scale(p.Blocked))
			s.Delayed = s.Delayed.Plus(scale(delayed))
			s.LagExact = false
		}
		if p.HasOldest {
			oldest(s, p.Oldest)
		}
	}
	for _, d := range dead {
		s := &subs[index[d.Subscriber]]
		if d.N < int64(limit) {
			s.Dead = exact(d.N)
		} else {
			s.Dead = Count{N: est.of("dead_letters", d.Subscriber, d.N)}
		}
	}

	// Handled per minute.
	handled, complete, err := r.handled(ctx)
	if err != nil {
		return nil, fmt.Errorf("stats: handled: %w", err)
	}
	for _, h := range handled {
		if i, ok := index[h.Subscriber]; ok {
			subs[i].HandledPerMinute = float64(h.Handled) / r.opts.RateWindow.Minutes()
		}
	}
	if !complete || len(handled) > 0 && handled[0].Scanned >= int64(r.opts.RateCap) {
		for i := range subs {
			subs[i].HandledExact = false
		}
	}

	for i := range subs {
		s := &subs[i]
		s.Waiting = s.InBackoff.Plus(s.Delayed).Plus(s.Blocked)
		s.Lag = r.age(s.OldestPending)
	}
	return subs, nil
}

// streamCount is one order partition's stream backlog and how much of it
// is delayed: exact when the sample stopped short of perPart rows, else
// extrapolated from the sample's density over the partition's seq range.
func streamCount(p db.StatsStreamRow, perPart int64) (total, delayed Count) {
	if p.N < perPart {
		return exact(p.N), exact(p.Delayed)
	}
	span := p.LastSeq - p.FirstSeq + 1
	n := p.N
	if span > 0 && p.TailSeq > p.LastSeq {
		n = int64(float64(p.N) * float64(p.TailSeq-p.FirstSeq+1) / float64(span))
	}
	return Count{N: max(n, p.N)}, Count{N: p.Delayed * max(n, p.N) / p.N}
}

func anyAtCap(parked []db.StatsParkedRow, dead []db.StatsDeadRow, limit int64) bool {
	for _, p := range parked {
		if p.N >= limit {
			return true
		}
	}
	for _, d := range dead {
		if d.N >= limit {
			return true
		}
	}
	return false
}

// estimates are the planner's statistics of the subscriber column.
type estimates map[string]db.StatsFrequenciesRow

func (r *reader) estimates(ctx context.Context) (*estimates, error) {
	rows, err := r.q.StatsFrequencies(ctx)
	if err != nil {
		return nil, fmt.Errorf("stats: estimates: %w", err)
	}
	e := estimates{}
	for _, row := range rows {
		e[row.TableName] = row
	}
	return &e, nil
}

// of estimates the rows of name in table as the planner would, and never
// less than counted (the cap the count stopped at).
func (e *estimates) of(table, name string, counted int64) int64 {
	row, ok := (*e)[table]
	if !ok || row.Reltuples <= 0 {
		return counted // never analyzed: all that is known
	}
	freq := -1.0
	var common float64
	for i, n := range row.Names {
		if i < len(row.Freqs) {
			common += row.Freqs[i]
			if n == name {
				freq = row.Freqs[i]
			}
		}
	}
	if freq < 0 {
		distinct := row.NDistinct
		if distinct < 0 {
			distinct = -distinct * row.Reltuples
		}
		if rest := distinct - float64(len(row.Names)); rest >= 1 {
			freq = max(0, 1-row.NullFrac-common) / rest
		} else {
			freq = 0
		}
	}
	return max(counted, int64(freq*row.Reltuples))
}

// outbox reads the outbox backlog.
func (r *reader) outbox(ctx context.Context) (Backlog, error) {
	row, err := r.q.StatsOutbox(ctx, int32(r.opts.Cap))
	if err != nil {
		return Backlog{}, fmt.Errorf("stats: outbox: %w", err)
	}
	limit := int64(r.opts.Cap)
	b := Backlog{Pending: exact(row.N), Due: exact(row.Due), Scheduled: Count{N: row.Scheduled, Exact: row.Scheduled < limit}}
	if row.N >= limit {
		total := max(row.N, row.LastID-row.OldestID+1)
		b.Pending = Count{N: total}
		b.Due = Count{N: row.Due * total / row.N}
	}
	if row.HasOldest {
		b.Oldest, b.Age = row.Oldest, r.age(row.Oldest)
	}
	if row.HasOldestDue {
		b.OldestDue, b.DueAge = row.OldestDue, r.age(row.OldestDue)
	}
	return b, nil
}
