package relay

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/db"
	"github.com/postbox-dev/postbox/internal/invalid"
	"github.com/postbox-dev/postbox/internal/notify"
	"github.com/postbox-dev/postbox/internal/pgtext"
)

// Config configures a Relay. Zero values mean the defaults.
type Config struct {
	// BatchSize is the most outbox rows moved per statement. Default 1000.
	BatchSize int
	// MaxBatchBytes bounds the payload bytes moved per statement (a batch
	// always moves at least one row). Default 16 MiB.
	MaxBatchBytes int64
	// PollInterval is how long an idle relay waits before looking again
	// when no wake-up arrives. Default 20ms: an empty poll is one read-only
	// statement, and this bounds the latency a message waits for the relay.
	// After a batch that moved messages but was not full, the relay waits a
	// quarter of it; after a full batch, not at all.
	PollInterval time.Duration
	// MaxPollInterval: after consecutive errors the wait grows up to this.
	// Default 5s.
	MaxPollInterval time.Duration
	// Listen subscribes to NOTIFY postbox_outbox, which producers may send
	// (outbox.Notify) to wake the relay at once. Polling stays the
	// correctness mechanism; this only lowers latency. Default off.
	Listen bool
	// Sink, if set, takes every message instead of the PostgreSQL inbox
	// (see dispatcher.Sink); routing to subscriptions is then the sink's
	// business. Payloads then travel through Go.
	Sink dispatcher.Sink
	// SinkTimeout bounds one Sink.Deliver call through its context.
	// Default 30s. A batch whose delivery times out is tried again.
	SinkTimeout time.Duration
	// Logger receives errors and lifecycle events. Default: silent.
	Logger *slog.Logger
	// OnBatch, if set, is called after each statement that moved messages
	// committed (and after each Sink batch), with what it did. It runs on
	// the relay's goroutine: keep it short. Observers (contrib/otel) hook
	// in here.
	OnBatch func(BatchInfo)
}

// BatchInfo is what a committed relay batch did, for Config.OnBatch.
type BatchInfo struct {
	Result
	// Subscribers got deliveries (empty for a Sink batch).
	Subscribers []string
	// Traceparents are the W3C traceparent headers of moved messages that
	// carry one, at most 128 (a Sink batch: all of them).
	Traceparents []string
	// Duration is the statement's (or the Sink delivery's) time.
	Duration time.Duration
}

// Default settings.
const (
	DefaultBatchSize       = 1000
	DefaultMaxBatchBytes   = 16 << 20
	DefaultPollInterval    = 20 * time.Millisecond
	DefaultMaxPollInterval = 5 * time.Second
	DefaultSinkTimeout     = 30 * time.Second
)

// MaxBatchSize is the largest Config.BatchSize.
const MaxBatchSize = 100_000

// NotifyChannel is the channel the relay listens on when Config.Listen is set.
const NotifyChannel = notify.OutboxChannel

// InboxChannel is the channel the relay notifies after a batch commits,
// with the name of each subscriber that got deliveries as payload.
const InboxChannel = notify.InboxChannel

func (c Config) withDefaults() (Config, error) {
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.MaxBatchBytes == 0 {
		c.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.MaxPollInterval == 0 {
		c.MaxPollInterval = DefaultMaxPollInterval
	}
	if c.SinkTimeout == 0 {
		c.SinkTimeout = DefaultSinkTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case c.BatchSize < 1 || c.BatchSize > MaxBatchSize:
		return c, invalid.Errorf("Config.BatchSize", "%d, want 1 to %d", c.BatchSize, MaxBatchSize)
	case c.MaxBatchBytes < 1:
		return c, invalid.Errorf("Config.MaxBatchBytes", "%d, want at least 1", c.MaxBatchBytes)
	case c.PollInterval < 0:
		return c, invalid.Errorf("Config.PollInterval", "%s is negative", c.PollInterval)
	case c.MaxPollInterval < c.PollInterval:
		return c, invalid.Errorf("Config.MaxPollInterval", "%s is less than PollInterval %s", c.MaxPollInterval, c.PollInterval)
	case c.SinkTimeout < 0:
		return c, invalid.Errorf("Config.SinkTimeout", "%s is negative", c.SinkTimeout)
	}
	return c, nil
}

// Stats are a relay's counters since it was created.
type Stats struct {
	Batches   int64 // statements that moved at least one message
	Claimed   int64 // outbox rows moved
	Delivered int64 // inbox deliveries written (or messages a Sink took)
	// Duplicates are deliveries not written because the subscriber had
	// handled the message ID within its dedup window. Publishing two
	// messages with one ID (say, by reusing a Message whose ID the first
	// Publish filled) shows up here.
	Duplicates int64
	NoRoute    int64 // queue sends that became no-route dead letters
	Dropped    int64 // topic messages no subscription matched
	// Quarantined are outbox rows the relay statement failed on alone,
	// moved to the dead letters of subscriber "_relay" with the error.
	Quarantined int64
	// Emptied counts outbox and inbox slots truncated once nothing in
	// them was needed.
	Emptied int64
	Errors  int64 // failed statements
}

// Relay moves committed outbox rows into the inbox. Run several on one
// database for availability: relay partitions keep them from moving
// messages of one key at the same time.
type Relay struct {
	pool *pgxpool.Pool
	cfg  Config

	// mu serializes batches of one Relay: marks, the horizon and the
	// adaptive batch size are its state.
	mu      sync.Mutex
	marks   marks
	horizon horizon
	size    int       // rows per statement now; less than BatchSize after errors
	idle    bool      // the last batch moved nothing
	sweepAt time.Time // next batch that ignores the marks
	sink    sinkState
	// slow counts the consecutive statement timeouts of the row slowID
	// probed alone: only repeated ones quarantine it.
	slowID int64
	slow   int

	lastOK    atomic.Int64 // unix nanos of the last statement that succeeded
	lastMoved atomic.Int64 // unix nanos of the last batch that moved messages

	batches, claimed, delivered, duplicates, noRoute, dropped, quarantined, emptied, errs atomic.Int64
}

// New returns a relay over pool.
func New(pool *pgxpool.Pool, cfg Config) (*Relay, error) {
	if pool == nil {
		return nil, invalid.Nil("pool")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Relay{pool: pool, cfg: cfg, size: cfg.BatchSize, sweepAt: time.Now().Add(sweepInterval)}, nil
}

// Stats returns the relay's counters.
func (r *Relay) Stats() Stats {
	return Stats{
		Batches:     r.batches.Load(),
		Claimed:     r.claimed.Load(),
		Delivered:   r.delivered.Load(),
		Duplicates:  r.duplicates.Load(),
		NoRoute:     r.noRoute.Load(),
		Dropped:     r.dropped.Load(),
		Quarantined: r.quarantined.Load(),
		Emptied:     r.emptied.Load(),
		Errors:      r.errs.Load(),
	}
}

// LastSuccess is when a relay statement last succeeded (moving messages or
// finding none), and LastMoved when one last moved messages; zero before
// the first. Readiness checks compare them with the backlog.
func (r *Relay) LastSuccess() time.Time { return unixNano(r.lastOK.Load()) }

// LastMoved is when a batch last moved messages; see LastSuccess.
func (r *Relay) LastMoved() time.Time { return unixNano(r.lastMoved.Load()) }

func unixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// Result is what one batch did.
type Result struct {
	Claimed, Delivered, Duplicates, NoRoute, Dropped, Quarantined int
	// More reports that the batch was cut by BatchSize or MaxBatchBytes:
	// more messages are likely waiting.
	More bool
}

func (a *Result) add(b Result) {
	a.Claimed += b.Claimed
	a.Delivered += b.Delivered
	a.Duplicates += b.Duplicates
	a.NoRoute += b.NoRoute
	a.Dropped += b.Dropped
	a.Quarantined += b.Quarantined
}

// RunOnce moves one batch and returns what it did. Each batch is one
// statement in one transaction: it commits whole or not at all. A batch
// that fails because of what it holds is retried smaller, down to the one
// row that makes it fail, which is then quarantined (Stats.Quarantined), so
// that one bad row never stops the others.
func (r *Relay) RunOnce(ctx context.Context) (Result, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cfg.Sink != nil {
		return r.sinkOnce(ctx)
	}
	res, err := r.batch(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return Result{}, fmt.Errorf("relay: batch: %w", ctx.Err()) // shutdown is no error of the relay's
		}
		r.errs.Add(1)
		return Result{}, fmt.Errorf("relay: batch: %w", err)
	}
	r.count(res)
	return res, nil
}

func (r *Relay) count(res Result) {
	now := time.Now().UnixNano()
	r.lastOK.Store(now)
	if res.Claimed == 0 && res.Quarantined == 0 {
		return
	}
	r.lastMoved.Store(now)
	r.batches.Add(1)
	r.claimed.Add(int64(res.Claimed))
	r.delivered.Add(int64(res.Delivered))
	r.duplicates.Add(int64(res.Duplicates))
	r.noRoute.Add(int64(res.NoRoute))
	r.dropped.Add(int64(res.Dropped))
	r.quarantined.Add(int64(res.Quarantined))
}

// batch runs one relay statement, pipelined with the horizon check that
// lets the marks advance (one round trip), and afterwards wakes the
// subscribers that got deliveries.
func (r *Relay) batch(ctx context.Context) (Result, error) {
	marks := r.marks.forStatement(&r.sweepAt)
	params := db.RelayBatchParams{BatchSize: int32(r.size), MaxBytes: r.cfg.MaxBatchBytes, Marks: marks[:]}
	started := time.Now()
	hz, row, err := r.horizon.withBatch(ctx, r.pool, params, r.idle)
	if err != nil {
		return r.failed(ctx, marks, err)
	}
	r.size = min(2*r.size, r.cfg.BatchSize) // grow back after a failure shrank it
	// Cut by the row or the byte limit: more is likely waiting, and only
	// ids up to the last one moved are known to be done.
	full := int(row.Candidates) >= int(params.BatchSize) || row.Claimed < row.Candidates
	r.idle = row.Claimed == 0
	res := Result{Claimed: int(row.Claimed), Delivered: int(row.Delivered), Duplicates: int(row.Duplicates),
		NoRoute: int(row.NoRoute), Dropped: int(row.Dropped), More: full}
	r.marks.advance(row.Parts, hz, full, row.MaxID)
	r.wake(ctx, row.Subscribers)
	if r.cfg.OnBatch != nil && res.Claimed > 0 {
		r.cfg.OnBatch(BatchInfo{Result: res, Subscribers: row.Subscribers, Traceparents: row.Traceparents,
			Duration: time.Since(started)})
	}
	return res, nil
}

// failed handles a relay statement's error. Errors of the connection or of
// concurrency are retried as they are. Any other error may be caused by a
// row the batch holds: the next batch is half the size, and a batch of one
// that still fails quarantines its row.
func (r *Relay) failed(ctx context.Context, marks marks, err error) (Result, error) {
	// Whatever failed, the marks start over (the next statement scans from
	// each partition's start): a commit the relay took for done may not be
	// (synchronous_commit off, a failover to a replica that lagged), and a
	// mark above rows that come back would let later messages of their
	// keys go first.
	r.marks = [partitions]int64{}
	r.horizon = horizon{}
	if ctx.Err() != nil || transient(err) {
		return Result{}, err
	}
	if r.size > 1 {
		r.cfg.Logger.Warn("relay batch failed; retrying smaller to find the row", "rows", r.size, "err", err)
		r.size = max(1, r.size/2)
		return Result{}, err
	}
	q := db.New(r.pool)
	id, perr := q.RelayPeek(ctx, marks[:])
	if perr != nil || id == 0 {
		return Result{}, err
	}
	// The row alone, so that it is this row the error is about.
	if err = r.probe(ctx, marks, id); err == nil {
		return Result{}, nil // it moves now: the cause was not the row
	}
	if ctx.Err() != nil || transient(err) {
		return Result{}, err
	}
	if statementTimeout(err) {
		// Alone, the row ran out of time, and not waiting for a lock (the
		// probe's lock_timeout would have ended that first): too big or too
		// slow to move in the time the relay's role gets. Blame it only
		// when that happens again and again.
		if r.slowID != id {
			r.slowID, r.slow = id, 0
		}
		if r.slow++; r.slow < slowProbes {
			r.cfg.Logger.Warn("relay statement timed out on one row alone; trying it again", "outbox_id", id,
				"times", r.slow, "err", err)
			return Result{}, err
		}
	}
	moved, qerr := q.QuarantineOutbox(ctx, db.QuarantineOutboxParams{ID: id, Error: pgtext.Clean("relay: "+err.Error(), pgtext.MaxErrorBytes)})
	if qerr != nil {
		return Result{}, fmt.Errorf("quarantine outbox row %d after %w: %w", id, err, qerr)
	}
	if !moved {
		return Result{}, err
	}
	r.cfg.Logger.Error("relay quarantined an outbox row it cannot move; it is a dead letter of _relay",
		"outbox_id", id, "err", err)
	r.size = r.cfg.BatchSize
	r.slowID, r.slow = 0, 0
	return Result{Quarantined: 1}, nil
}

// slowProbes is how many statement timeouts in a row of one row probed
// alone make the relay quarantine it.
const slowProbes = 3

// probe runs the relay statement on the row id alone, in a transaction
// whose lock waits end before its statement timeout (ProbeLockTimeout).
func (r *Relay) probe(ctx context.Context, marks marks, id int64) error {
	return pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		if err := q.ProbeLockTimeout(ctx); err != nil {
			return err
		}
		_, err := q.RelayBatch(ctx, db.RelayBatchParams{BatchSize: 1, MaxBytes: r.cfg.MaxBatchBytes,
			Marks: marks[:], OnlyID: &id})
		return err
	})
}

// wake tells the consumers of subscribers that got deliveries, after the
// batch committed and in a transaction of its own: a wake-up is a hint,
// and a full notification queue (a listener that stopped reading) must not
// fail or slow the data path. Errors are only logged.
func (r *Relay) wake(ctx context.Context, subscribers []string) {
	if len(subscribers) == 0 {
		return
	}
	if err := db.New(r.pool).NotifySubscribers(ctx, subscribers); err != nil && ctx.Err() == nil {
		r.cfg.Logger.Debug("relay wake-up not sent", "subscribers", len(subscribers), "err", err)
	}
}

// Drain moves batches until the outbox has nothing the relay can claim,
// and returns the totals. Tests and tools use it; services use Run.
func (r *Relay) Drain(ctx context.Context) (Result, error) {
	var total Result
	for {
		res, err := r.RunOnce(ctx)
		if err != nil {
			return total, err
		}
		total.add(res)
		if res.Claimed == 0 && res.Quarantined == 0 {
			return total, nil
		}
	}
}

// housekeeping is how often Run empties slots and releases scheduled
// messages; both are read-only when there is nothing to do.
const housekeeping = time.Second

// Run relays until ctx ends. It loops at once while batches come back full,
// otherwise waits PollInterval (or until a NOTIFY when Listen is set).
// Errors are logged and retried with a growing wait; Run returns nil when
// ctx ends. The batch in flight then either commits or rolls back whole.
func (r *Relay) Run(ctx context.Context) error {
	log := r.cfg.Logger
	log.Info("relay started", "batch_size", r.cfg.BatchSize, "poll_interval", r.cfg.PollInterval)
	defer log.Info("relay stopped")

	var wake *notify.Listener
	if r.cfg.Listen {
		wake = notify.Start(ctx, r.pool, notify.OutboxChannel, nil, log)
		defer wake.Wait()
	}
	wait := r.cfg.PollInterval
	nextChores := time.Now()
	for {
		if time.Now().After(nextChores) {
			r.chores(ctx)
			nextChores = time.Now().Add(housekeeping)
		}
		woken := wake.C()
		res, err := r.RunOnce(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			log.Error("relay batch failed", "err", err, "retry_in", wait)
			wait = min(max(2*wait, r.cfg.PollInterval), r.cfg.MaxPollInterval)
		case res.More || res.Quarantined > 0:
			wait = r.cfg.PollInterval
			continue // more is waiting: no pause
		case res.Claimed > 0:
			// Messages are flowing: look again sooner. A full poll interval
			// here was most of the relay's share of the latency (p99 21.7 ms
			// of 31 ms at 1,000 msg/s, docs/benchmarks.md).
			wait = r.cfg.PollInterval / 4
		default:
			wait = r.cfg.PollInterval
		}
		if !notify.Sleep(ctx, wait, woken) {
			return nil
		}
	}
}

// chores empties slots nothing needs (TRUNCATE, so space returns even while
// a long transaction holds vacuum back) and puts due scheduled messages
// back into the outbox.
func (r *Relay) chores(ctx context.Context) {
	q := db.New(r.pool)
	n, err := q.RotateSlots(ctx)
	if err != nil && ctx.Err() == nil {
		r.cfg.Logger.Warn("relay could not empty slots", "err", err)
	}
	r.emptied.Add(int64(n))
	if _, err := q.ReleaseScheduled(ctx, int32(r.cfg.BatchSize)); err != nil && ctx.Err() == nil {
		r.cfg.Logger.Warn("relay could not release scheduled messages", "err", err)
	}
}

// Chores runs the relay's housekeeping once: Run does it every second.
// Tests and tools that drive a relay with RunOnce call it themselves.
func (r *Relay) Chores(ctx context.Context) { r.chores(ctx) }
