package inbox

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/internal/db"
	"github.com/postbox-dev/postbox/internal/invalid"
)

// JanitorConfig configures a Janitor. Zero values mean the defaults.
type JanitorConfig struct {
	// Interval between sweeps. Default 1 minute.
	Interval time.Duration
	// BatchSize is the most rows deleted per transaction. Default 1000.
	BatchSize int
	// Logger; default silent.
	Logger *slog.Logger
}

// Janitor forgets handled message IDs once they are older than their
// subscriber's dedup window (dispatcher.Options.DedupWindow), in bounded
// batches. Run one per process where convenient: an advisory lock lets only
// one janitor sweep at a time, and the others skip that round.
type Janitor struct {
	pool *pgxpool.Pool
	cfg  JanitorConfig
}

// NewJanitor returns a janitor over pool.
func NewJanitor(pool *pgxpool.Pool, cfg JanitorConfig) (*Janitor, error) {
	switch {
	case pool == nil:
		return nil, invalid.Nil("pool")
	case cfg.Interval < 0:
		return nil, invalid.Errorf("JanitorConfig.Interval", "%s is negative", cfg.Interval)
	case cfg.BatchSize < 0:
		return nil, invalid.Errorf("JanitorConfig.BatchSize", "%d is negative", cfg.BatchSize)
	}
	if cfg.Interval == 0 {
		cfg.Interval = time.Minute
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = 1000
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Interval < 0 || cfg.BatchSize < 1 || cfg.BatchSize > 100_000 {
		return nil, fmt.Errorf("inbox: JanitorConfig: Interval %s must be positive and BatchSize %d 1 to 100000", cfg.Interval, cfg.BatchSize)
	}
	return &Janitor{pool: pool, cfg: cfg}, nil
}

// Run sweeps every Interval until ctx ends.
func (j *Janitor) Run(ctx context.Context) error {
	t := time.NewTicker(j.cfg.Interval)
	defer t.Stop()
	for {
		if n, err := j.RunOnce(ctx); err != nil && ctx.Err() == nil {
			j.cfg.Logger.Error("janitor sweep failed", "err", err)
		} else if n > 0 {
			j.cfg.Logger.Info("janitor forgot handled messages", "rows", n)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// RunOnce sweeps until nothing is past its window, one batch per
// transaction, and returns how many rows it deleted. It returns 0 at once
// when another janitor holds the lock.
func (j *Janitor) RunOnce(ctx context.Context) (int, error) {
	total := 0
	for {
		n, locked, err := j.batch(ctx)
		total += n
		if err != nil || !locked || n < j.cfg.BatchSize {
			return total, err
		}
	}
}

func (j *Janitor) batch(ctx context.Context) (deleted int, locked bool, err error) {
	tx, err := j.pool.Begin(ctx)
	if err != nil {
		return 0, false, fmt.Errorf("inbox: janitor: begin: %w", err)
	}
	defer tx.Rollback(ctx)
	q := db.New(tx)
	if locked, err = q.TryJanitorLock(ctx); err != nil || !locked {
		return 0, false, err
	}
	n, err := q.PurgeProcessed(ctx, int32(j.cfg.BatchSize))
	if err != nil {
		return 0, true, fmt.Errorf("inbox: janitor: purge: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, true, fmt.Errorf("inbox: janitor: commit: %w", err)
	}
	return int(n), true, nil
}
