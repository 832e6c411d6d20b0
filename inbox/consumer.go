package inbox

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/internal/invalid"
	"github.com/postbox-dev/postbox/internal/notify"
)

// Config configures a Consumer. Zero values mean the defaults.
type Config struct {
	// Subscriber is the queue or topic subscriber to consume. It must be
	// declared (package dispatcher); its retry settings apply, re-read
	// every minute, so changes reach running consumers.
	Subscriber string
	// Handler handles each delivery. Set Handler or BatchHandler, not both.
	Handler Handler
	// BatchHandler handles all deliveries of a batch in one call.
	BatchHandler BatchHandler
	// BatchSize is the most deliveries claimed and committed together.
	// Default 100. A batch runs without savepoints while its handlers
	// succeed; only a batch in which one fails is run again with one per
	// delivery (see SavepointPerDelivery).
	BatchSize int
	// SavepointPerDelivery runs every handler in a savepoint of its own
	// from the start, instead of optimistically: a failure then never runs
	// the batch's other handlers again. For handlers whose effects outside
	// the database must not repeat without a crash; it costs a round trip
	// per delivery.
	SavepointPerDelivery bool
	// BatchBudget: once a batch has run this long it starts no more
	// handlers and commits what it has. Default 5s, well below common
	// idle_in_transaction_session_timeout and transaction_timeout values.
	BatchBudget time.Duration
	// Concurrency is how many batches are handled at once, each in its own
	// transaction on its own connection. Default 4. A subscriber's
	// deliveries fall into 16 order partitions, which one batch at a time
	// works, so more than 16 workers per subscriber (over all processes)
	// add nothing. Give the pool more than Concurrency connections: a
	// handler that uses the pool rather than its transaction needs one of
	// its own. Unless NoListen is set, the consumer also takes one
	// connection out of the pool to LISTEN: it does not count against the
	// pool's MaxConns, but it does count against the server's
	// max_connections.
	Concurrency int
	// PollInterval is how soon an idle consumer looks again after a
	// wake-up or after finding work; each empty look doubles the wait
	// (with jitter), up to MaxPollInterval. Retries and delayed messages
	// become due without a wake-up, so they wait at most MaxPollInterval.
	// Default 100ms.
	PollInterval time.Duration
	// MaxPollInterval bounds the idle wait. Default 1s: an idle consumer
	// runs about one read-only statement a second and writes nothing.
	MaxPollInterval time.Duration
	// HandlerTimeout bounds one handler call through its context.
	// Default 30s. A handler that ignores its context cannot be stopped.
	HandlerTimeout time.Duration
	// NoListen turns off LISTEN for the relay's wake-ups: workers then only
	// poll.
	NoListen bool
	// Logger receives failures and lifecycle events. Default: silent.
	Logger *slog.Logger
	// OnBatch, if set, is called after each batch transaction commits,
	// with what it did. It runs on the worker's goroutine: keep it short.
	// Observers (metrics, tracing in contrib/otel) hook in here.
	OnBatch func(BatchInfo)
}

// BatchInfo is what a committed batch did, for Config.OnBatch.
type BatchInfo struct {
	Subscriber string
	// Handled are the deliveries whose effects committed; Failed those
	// that failed and will be retried; Dead those that became dead
	// letters; Duplicates those dropped as already handled.
	Handled, Failed, Dead []*Delivery
	Duplicates            int
	// Claimed is how long the claim statement took; Duration the batch,
	// from its claim to its commit.
	Claimed, Duration time.Duration
}

// Defaults.
const (
	DefaultBatchSize       = 100
	DefaultBatchBudget     = 5 * time.Second
	DefaultConcurrency     = 4
	DefaultPollInterval    = 100 * time.Millisecond
	DefaultMaxPollInterval = time.Second
	DefaultHandlerTimeout  = 30 * time.Second
	maxBatchSize           = 10_000
	maxConcurrency         = 1024
)

func (c Config) withDefaults() (Config, error) {
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.BatchBudget == 0 {
		c.BatchBudget = DefaultBatchBudget
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.PollInterval == 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.MaxPollInterval == 0 {
		c.MaxPollInterval = max(DefaultMaxPollInterval, c.PollInterval)
	}
	if c.HandlerTimeout == 0 {
		c.HandlerTimeout = DefaultHandlerTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if err := postbox.ValidateName("Config.Subscriber", c.Subscriber); err != nil {
		return c, err
	}
	switch {
	case c.Handler == nil && c.BatchHandler == nil:
		return c, invalid.Errorf("Config.Handler", "nil: set Handler or BatchHandler")
	case c.Handler != nil && c.BatchHandler != nil:
		return c, invalid.Errorf("Config.BatchHandler", "set as well as Handler: set one of them")
	case c.BatchSize < 1 || c.BatchSize > maxBatchSize:
		return c, invalid.Errorf("Config.BatchSize", "%d, want 1 to %d", c.BatchSize, maxBatchSize)
	case c.BatchBudget < 0:
		return c, invalid.Errorf("Config.BatchBudget", "%s is negative", c.BatchBudget)
	case c.Concurrency < 1 || c.Concurrency > maxConcurrency:
		return c, invalid.Errorf("Config.Concurrency", "%d, want 1 to %d", c.Concurrency, maxConcurrency)
	case c.PollInterval < 0:
		return c, invalid.Errorf("Config.PollInterval", "%s is negative", c.PollInterval)
	case c.MaxPollInterval < c.PollInterval:
		return c, invalid.Errorf("Config.MaxPollInterval", "%s is less than PollInterval %s", c.MaxPollInterval, c.PollInterval)
	case c.HandlerTimeout < 0:
		return c, invalid.Errorf("Config.HandlerTimeout", "%s is negative", c.HandlerTimeout)
	}
	return c, nil
}

// Stats are a consumer's counters since it was created.
type Stats struct {
	Batches    int64 // transactions that handled at least one delivery
	Handled    int64 // deliveries handled and committed, counted at commit
	Failed     int64 // failed attempts that will be retried
	Dead       int64 // deliveries dead-lettered
	Duplicates int64 // deliveries dropped as already handled
	Errors     int64 // batches that failed as a whole (connection, commit)
	// Claims counts claim statements, EmptyClaims those that found
	// nothing: an idle consumer's whole cost.
	Claims, EmptyClaims int64
	// Conflicts counts claimed partitions another consumer took first;
	// their deliveries were left to it.
	Conflicts int64
	// ClaimTime is the time spent in claim statements, empty ones
	// included: ClaimTime / Claims rising while the backlog stays flat is
	// the first sign of a claim walking what vacuum could not remove.
	ClaimTime time.Duration
}

// Consumer handles one subscriber's deliveries. Run many, in one process or
// many: they share the subscriber's 16 order partitions, one batch per
// partition at a time, and never handle a delivery twice.
type Consumer struct {
	pool     *pgxpool.Pool
	cfg      Config
	settings settingsCache
	coord    coordinator
	busy     busyParts

	// once is what RunOnce's batches leave for the next one (a smaller
	// batch after a lost one, a culprit still to isolate).
	onceMu sync.Mutex
	once   workerState

	batches, handled, failed, dead, duplicates, errs, claims, emptyClaims, conflicts, claimNanos atomic.Int64
}

// NewConsumer returns a consumer of cfg.Subscriber over pool.
func NewConsumer(pool *pgxpool.Pool, cfg Config) (*Consumer, error) {
	if pool == nil {
		return nil, invalid.Nil("pool")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Consumer{pool: pool, cfg: cfg}
	c.coord.init(cfg.Concurrency)
	return c, nil
}

// Stats returns the consumer's counters.
func (c *Consumer) Stats() Stats {
	return Stats{
		Batches:     c.batches.Load(),
		Handled:     c.handled.Load(),
		Failed:      c.failed.Load(),
		Dead:        c.dead.Load(),
		Duplicates:  c.duplicates.Load(),
		Errors:      c.errs.Load(),
		Claims:      c.claims.Load(),
		EmptyClaims: c.emptyClaims.Load(),
		Conflicts:   c.conflicts.Load(),
		ClaimTime:   time.Duration(c.claimNanos.Load()),
	}
}

// Run handles deliveries until ctx ends, with cfg.Concurrency workers. When
// ctx ends, each worker finishes the handler in flight, commits what its
// batch handled, releases the rest, and Run returns nil. It returns an error
// only when the subscriber cannot be loaded at start.
func (c *Consumer) Run(ctx context.Context) error {
	if _, err := c.loadSettings(ctx); err != nil {
		return err
	}
	log := c.cfg.Logger.With("subscriber", c.cfg.Subscriber)
	log.Info("consumer started", "concurrency", c.cfg.Concurrency, "batch_size", c.cfg.BatchSize)
	defer log.Info("consumer stopped")
	var wake *notify.Listener
	if !c.cfg.NoListen {
		sub := c.cfg.Subscriber
		wake = notify.Start(ctx, c.pool, notify.InboxChannel, func(p string) bool { return p == sub }, log)
		defer wake.Wait()
	}
	var wg sync.WaitGroup
	wg.Go(func() { c.coord.poll(ctx, wake, c.cfg.PollInterval, c.cfg.MaxPollInterval) })
	for range c.cfg.Concurrency {
		wg.Go(func() { c.work(ctx, log) })
	}
	wg.Wait()
	return nil
}

// RunOnce claims and handles one batch, commits it, and returns how many
// deliveries it claimed (0: nothing was ready). Tests and tools use it;
// services use Run.
func (c *Consumer) RunOnce(ctx context.Context) (int, error) {
	w := newWorker(c)
	c.onceMu.Lock()
	if c.once.limit > 0 {
		w.workerState = c.once
	}
	c.onceMu.Unlock()
	n, err := w.once(ctx)
	c.onceMu.Lock()
	c.once = w.workerState
	c.onceMu.Unlock()
	return n, err
}

func (c *Consumer) loadSettings(ctx context.Context) (settings, error) {
	return c.settings.get(ctx, c.pool, c.cfg.Subscriber, func(err error) {
		c.cfg.Logger.Warn("re-read subscriber settings", "subscriber", c.cfg.Subscriber, "err", err)
	})
}

// budget is how long a batch may start handlers.
func (c *Consumer) budget() time.Duration { return c.cfg.BatchBudget }
