package aggregate

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"time"

	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/db"
)

// Sweep completes the aggregator's open aggregates whose deadline has
// passed, with the parts that arrived (Aggregate.TimedOut set), and
// forgets aggregates completed longer than Retention ago. It returns how
// many it completed. Each batch of due aggregates is one transaction, the
// aggregates locked (FOR UPDATE SKIP LOCKED: one a part is being added to
// right now waits for the next sweep), so every aggregate completes
// exactly once, by a part or by a sweep, however many sweepers run. An
// aggregate whose Build or Deliver fails stays open for the next sweep;
// the others complete, and the errors are returned joined.
//
// Timeouts fire only when something sweeps: call Sweep from a ticker of
// your own, or Run.
func (a *Aggregator) Sweep(ctx context.Context, beginner inbox.TxBeginner) (int, error) {
	total := 0
	var errs []error
	for {
		n, failed, err := a.sweepBatch(ctx, beginner)
		total += n
		errs = append(errs, failed...)
		if err != nil {
			return total, errors.Join(append(errs, err)...)
		}
		if n+len(failed) < sweepBatch || len(failed) > 0 {
			break // the due ones are done (the failed would come back at once)
		}
	}
	if err := a.prune(ctx, beginner); err != nil {
		errs = append(errs, err)
	}
	return total, errors.Join(errs...)
}

// prune forgets aggregates completed longer than Retention ago, a bounded
// batch per transaction.
func (a *Aggregator) prune(ctx context.Context, beginner inbox.TxBeginner) error {
	const batch = 1000
	for {
		tx, err := beginner.Begin(ctx)
		if err != nil {
			return fmt.Errorf("aggregate %s: prune: begin: %w", a.cfg.Name, err)
		}
		n, err := db.New(tx).PruneAggregates(ctx, db.PruneAggregatesParams{
			Aggregator: a.cfg.Name, RetentionMs: a.cfg.Retention.Milliseconds(), MaxRows: batch})
		if err == nil {
			err = tx.Commit(ctx)
		}
		if err != nil {
			tx.Rollback(ctx)
			return fmt.Errorf("aggregate %s: prune: %w", a.cfg.Name, err)
		}
		if n < batch {
			return nil
		}
	}
}

// sweepBatch completes up to sweepBatch due aggregates in one transaction,
// each in a savepoint, and returns how many it completed and the errors of
// those it could not.
func (a *Aggregator) sweepBatch(ctx context.Context, beginner inbox.TxBeginner) (int, []error, error) {
	tx, err := beginner.Begin(ctx)
	if err != nil {
		return 0, nil, fmt.Errorf("aggregate %s: sweep: begin: %w", a.cfg.Name, err)
	}
	defer tx.Rollback(ctx)
	q := db.New(tx)
	due, err := q.DueAggregates(ctx, db.DueAggregatesParams{Aggregator: a.cfg.Name, MaxRows: sweepBatch})
	if err != nil {
		return 0, nil, fmt.Errorf("aggregate %s: sweep: %w", a.cfg.Name, err)
	}
	if len(due) == 0 {
		return 0, nil, nil
	}
	done := 0
	var failed []error
	for _, r := range due {
		agg := &Aggregate{Aggregator: a.cfg.Name, Key: r.Key, Expected: a.cfg.Count, CreatedAt: r.CreatedAt, TimedOut: true}
		if r.Expected != nil {
			agg.Expected = int(*r.Expected)
		}
		if r.Deadline != nil {
			agg.Deadline = *r.Deadline
		}
		sp, err := tx.Begin(ctx)
		if err != nil {
			return 0, nil, fmt.Errorf("aggregate %s: sweep: savepoint: %w", a.cfg.Name, err)
		}
		err = a.loadParts(ctx, db.New(sp), agg)
		if err == nil {
			err = a.complete(ctx, sp, agg)
		}
		if err != nil {
			failed = append(failed, err)
			if rbErr := sp.Rollback(ctx); rbErr != nil {
				return 0, nil, fmt.Errorf("aggregate %s: sweep: %w", a.cfg.Name, errors.Join(err, rbErr))
			}
			continue
		}
		if err := sp.Commit(ctx); err != nil {
			return 0, nil, fmt.Errorf("aggregate %s: sweep: release savepoint: %w", a.cfg.Name, err)
		}
		done++
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, nil, fmt.Errorf("aggregate %s: sweep: commit: %w", a.cfg.Name, err)
	}
	return done, failed, nil
}

// Run sweeps every Config.SweepInterval until ctx ends, logging failures,
// and returns nil then. It is the small runner that makes timeouts fire;
// run one or more per database (they share the work safely).
func (a *Aggregator) Run(ctx context.Context, beginner inbox.TxBeginner) error {
	t := time.NewTicker(a.cfg.SweepInterval)
	defer t.Stop()
	for {
		if n, err := a.Sweep(ctx, beginner); err != nil && ctx.Err() == nil {
			a.cfg.Logger.Error("aggregate sweep", "aggregator", a.cfg.Name, "completed", n, "err", err)
		} else if n > 0 {
			a.cfg.Logger.Info("aggregates timed out", "aggregator", a.cfg.Name, "completed", n)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
