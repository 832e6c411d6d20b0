package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
)

// ConsumerConfig configures a Consumer. Zero values mean the defaults.
type ConsumerConfig struct {
	// Subscriber names the consumer group whose handled message IDs
	// inbox.HandleOnce records (postbox's dedup table). Required; it need
	// not be declared with package dispatcher, nor match the Kafka group.
	Subscriber string
	// Handler handles each message. What it writes through its tx commits
	// together with the "handled" mark, exactly once per message ID.
	Handler inbox.Handler
	// Concurrency is how many partitions are handled at once; the records
	// of one partition are handled one at a time, in offset order.
	// Default 4.
	Concurrency int
	// HandlerTimeout bounds one handler call through its context.
	// Default 30s. A handler in flight when Run's context ends still
	// finishes, within this bound.
	HandlerTimeout time.Duration
	// MaxAttempts is how often a failing message is tried before it is
	// skipped like a permanent failure. Default 0: until it succeeds.
	// While a message is retried its partition waits, as Kafka's order
	// requires.
	MaxAttempts int
	// Backoff is the wait between attempts: exponential with jitter.
	// Default dispatcher.DefaultBackoff (1s, doubling, up to 5m).
	Backoff dispatcher.Backoff
	// Logger receives failures and lifecycle events. Default: silent.
	Logger *slog.Logger
}

// Defaults.
const (
	DefaultConcurrency    = 4
	DefaultHandlerTimeout = 30 * time.Second
	maxConcurrency        = 1024
)

func (c ConsumerConfig) withDefaults() (ConsumerConfig, error) {
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.HandlerTimeout == 0 {
		c.HandlerTimeout = DefaultHandlerTimeout
	}
	if c.Backoff.Initial == 0 {
		c.Backoff.Initial = dispatcher.DefaultBackoff.Initial
	}
	if c.Backoff.Max == 0 {
		c.Backoff.Max = max(dispatcher.DefaultBackoff.Max, c.Backoff.Initial)
	}
	if c.Backoff.Multiplier == 0 {
		c.Backoff.Multiplier = dispatcher.DefaultBackoff.Multiplier
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if err := postbox.ValidateName("ConsumerConfig.Subscriber", c.Subscriber); err != nil {
		return c, err
	}
	switch {
	case c.Handler == nil:
		return c, errors.New("kafka: ConsumerConfig.Handler is nil")
	case c.Concurrency < 1 || c.Concurrency > maxConcurrency:
		return c, fmt.Errorf("kafka: ConsumerConfig.Concurrency %d: want 1 to %d", c.Concurrency, maxConcurrency)
	case c.HandlerTimeout < 0:
		return c, fmt.Errorf("kafka: ConsumerConfig.HandlerTimeout %s: negative", c.HandlerTimeout)
	case c.MaxAttempts < 0:
		return c, fmt.Errorf("kafka: ConsumerConfig.MaxAttempts %d: negative", c.MaxAttempts)
	case c.Backoff.Initial < 0 || c.Backoff.Max < c.Backoff.Initial:
		return c, errors.New("kafka: ConsumerConfig.Backoff: want 0 <= Initial <= Max")
	case c.Backoff.Multiplier < 1:
		return c, errors.New("kafka: ConsumerConfig.Backoff.Multiplier: less than 1")
	}
	return c, nil
}

// ConsumerStats are a Consumer's counters since it was created.
type ConsumerStats struct {
	Handled    int64 // records whose handler's transaction committed
	Duplicates int64 // records of messages already handled (same ID): handler not run
	Retried    int64 // failed attempts, tried again after a backoff
	Skipped    int64 // records given up on: permanent errors, no message ID, MaxAttempts reached
}

// Consumer hands the records of a Kafka consumer group to an
// inbox.Handler through inbox.HandleOnce. A record's offset is marked for
// commit only after the transaction that ran the handler and recorded the
// message ID has committed, and only marked offsets are committed
// (kgo.AutoCommitMarks): a crash re-reads at most what was handled since
// the last commit, and HandleOnce drops it.
type Consumer struct {
	db  inbox.TxBeginner
	cl  *kgo.Client
	cfg ConsumerConfig

	handled, duplicates, retried, skipped atomic.Int64
}

// NewConsumer returns a Consumer that handles messages with cfg.Handler in
// transactions begun on db (a *pgxpool.Pool, normally), reading through a
// client made with opts, which must name the group and its topics
// (kgo.ConsumerGroup, kgo.ConsumeTopics) besides the brokers. The Consumer
// adds kgo.AutoCommitMarks; opts must not disable auto-commit.
func NewConsumer(db inbox.TxBeginner, cfg ConsumerConfig, opts ...kgo.Opt) (*Consumer, error) {
	if db == nil {
		return nil, errors.New("kafka: nil database")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	cl, err := kgo.NewClient(append(opts[:len(opts):len(opts)], kgo.AutoCommitMarks())...)
	if err != nil {
		return nil, fmt.Errorf("kafka: new client: %w", err)
	}
	if group, _ := cl.OptValue(kgo.ConsumerGroup).(string); group == "" {
		cl.Close()
		return nil, errors.New("kafka: the Consumer needs a consumer group (kgo.ConsumerGroup) to commit offsets")
	}
	if off, _ := cl.OptValue(kgo.DisableAutoCommit).(bool); off {
		cl.Close()
		return nil, errors.New("kafka: the Consumer commits through kgo.AutoCommitMarks; remove kgo.DisableAutoCommit")
	}
	return &Consumer{db: db, cl: cl, cfg: cfg}, nil
}

// Stats returns the consumer's counters.
func (c *Consumer) Stats() ConsumerStats {
	return ConsumerStats{
		Handled:    c.handled.Load(),
		Duplicates: c.duplicates.Load(),
		Retried:    c.retried.Load(),
		Skipped:    c.skipped.Load(),
	}
}

// Run handles records until ctx ends. Then it lets the handlers in flight
// finish, commits the offsets of what was handled, leaves the group,
// closes the client and returns nil. Run can be called once.
func (c *Consumer) Run(ctx context.Context) error {
	log := c.cfg.Logger.With("subscriber", c.cfg.Subscriber)
	log.Info("kafka consumer started", "concurrency", c.cfg.Concurrency)
	defer log.Info("kafka consumer stopped")
	defer c.cl.Close()
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.cl.CommitMarkedOffsets(cctx); err != nil {
			log.Warn("kafka consumer: commit at shutdown", "err", err)
		}
	}()
	sem := make(chan struct{}, c.cfg.Concurrency)
	for {
		fetches := c.cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if fetches.IsClientClosed() {
			return errors.New("kafka: client closed")
		}
		fetches.EachError(func(topic string, partition int32, err error) {
			log.Warn("kafka consumer: fetch", "topic", topic, "partition", partition, "err", err)
		})
		var wg sync.WaitGroup
		fetches.EachPartition(func(p kgo.FetchTopicPartition) {
			if len(p.Records) == 0 {
				return
			}
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				c.handlePartition(ctx, log, p.Records)
			})
		})
		wg.Wait()
	}
}

// handlePartition handles one partition's records in order, each until it
// is done, and marks each for commit once done. It stops early only when
// ctx ends; the records left unmarked are read again by whoever consumes
// the partition next.
func (c *Consumer) handlePartition(ctx context.Context, log *slog.Logger, records []*kgo.Record) {
	for _, r := range records {
		for attempt := 1; ; attempt++ {
			if ctx.Err() != nil {
				return
			}
			wait, retry := c.handle(log, r, attempt)
			if !retry {
				c.cl.MarkCommitRecords(r)
				break
			}
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
	}
}

// handle runs one attempt at a record through HandleOnce. retry reports a
// failure worth another attempt after wait.
func (c *Consumer) handle(log *slog.Logger, r *kgo.Record, attempt int) (wait time.Duration, retry bool) {
	log = log.With("topic", r.Topic, "partition", r.Partition, "offset", r.Offset, "attempt", attempt)
	m, err := decode(r)
	if err != nil {
		c.skipped.Add(1)
		log.Error("kafka consumer: skipping undecodable record", "err", err)
		return 0, false
	}
	log = log.With("message_id", m.ID)
	// The handler runs to its end even when Run's context ends: its work
	// commits or rolls back whole.
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.HandlerTimeout)
	duplicate, err := inbox.HandleOnce(ctx, c.db, c.cfg.Subscriber, m, withRecord(c.cfg.Handler, attempt, r.Partition))
	cancel()
	switch {
	case err == nil && duplicate:
		c.duplicates.Add(1)
	case err == nil:
		c.handled.Add(1)
	case postbox.IsPermanent(err):
		c.skipped.Add(1)
		log.Error("kafka consumer: permanent error; skipping record", "err", err)
	case c.cfg.MaxAttempts > 0 && attempt >= c.cfg.MaxAttempts:
		c.skipped.Add(1)
		log.Error("kafka consumer: out of attempts; skipping record", "err", err)
	default:
		c.retried.Add(1)
		wait = retryDelay(c.cfg.Backoff, attempt)
		log.Warn("kafka consumer: handler failed; retrying", "err", err, "retry_in", wait)
		return wait, true
	}
	return 0, false
}

// withRecord shows the handler the attempt and the Kafka partition, which
// HandleOnce does not know.
func withRecord(h inbox.Handler, attempt int, partition int32) inbox.Handler {
	return inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		d.Attempt = attempt
		d.Partition = int(partition)
		return h.Handle(ctx, tx, d)
	})
}

// retryDelay is the wait after the given failed attempt: exponential with
// jitter (randomization 0.5), capped at b.Max, as postbox's inbox retries.
func retryDelay(b dispatcher.Backoff, failedAttempt int) time.Duration {
	eb := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(b.Initial),
		backoff.WithMultiplier(b.Multiplier),
		backoff.WithMaxInterval(b.Max),
		backoff.WithMaxElapsedTime(0),
	)
	var d time.Duration
	for range min(max(failedAttempt, 1), 100) {
		d = eb.NextBackOff()
	}
	return d
}
