package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/internal/benchkit"
)

// pinWindow holds the horizon during part of a timed phase and measures
// what that did: latency before, during and after, and the queue tables'
// size before the pin and at the end.
type pinWindow struct {
	mu                   sync.Mutex
	from, to             time.Time
	sizeBefore, procSize int64
	err                  error
}

// schedule pins from at into the phase for d, in the background.
func (w *pinWindow) schedule(ctx context.Context, e *env, db *pgxpool.Pool, at, d time.Duration) (stop func()) {
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if !sleepCtx(pctx, at) {
			return
		}
		q, p, err := tableSizes(pctx, db)
		release, perr := e.PinHorizon(pctx)
		w.mu.Lock()
		w.from, w.sizeBefore, w.procSize, w.err = time.Now(), q, p, errors.Join(err, perr)
		w.mu.Unlock()
		if perr != nil {
			return
		}
		sleepCtx(pctx, d)
		release()
		w.mu.Lock()
		w.to = time.Now()
		w.mu.Unlock()
	}()
	return func() { cancel(); <-done }
}

// report splits lats by when their message committed (commitAt, unix
// nanoseconds) and compares the tables' sizes.
func (w *pinWindow) report(ctx context.Context, db *pgxpool.Pool, lats []time.Duration, commitAt []atomic.Int64) ([]string, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return nil, w.err
	}
	if w.from.IsZero() || w.to.IsZero() {
		return nil, errors.New("the pin did not start and end within the timed phase: make --duration longer than --pin-at + --pin-for")
	}
	var before, during, after []time.Duration
	for i, l := range lats {
		at := time.Unix(0, commitAt[i].Load())
		switch {
		case at.Before(w.from):
			before = append(before, l)
		case at.Before(w.to):
			during = append(during, l)
		default:
			after = append(after, l)
		}
	}
	q, p, err := tableSizes(ctx, db)
	if err != nil {
		return nil, err
	}
	p99 := func(d []time.Duration) float64 { _, x := benchkit.Percentiles(d); return benchkit.Millis(x) }
	return []string{
		fmt.Sprintf("p99_before_pin_ms=%.2f", p99(before)),
		fmt.Sprintf("p99_pinned_ms=%.2f", p99(during)),
		fmt.Sprintf("p99_after_pin_ms=%.2f", p99(after)),
		fmt.Sprintf("queue_bytes_before_pin=%d", w.sizeBefore),
		fmt.Sprintf("queue_bytes_end=%d", q),
		fmt.Sprintf("end_after_pin_s=%.0f", time.Since(w.to).Seconds()),
		fmt.Sprintf("processed_bytes_before_pin=%d", w.procSize),
		fmt.Sprintf("processed_bytes_end=%d", p),
	}, nil
}

// tableSizes returns the total size of postbox's queue tables (outbox and
// inbox slots, parked, dead letters, cursors, scheduled: what the backlog
// needs) and, apart, of postbox.processed (the dedup window, which grows
// with time whatever the backlog).
func tableSizes(ctx context.Context, db *pgxpool.Pool) (queue, processed int64, err error) {
	err = db.QueryRow(ctx, `SELECT
		coalesce(sum(pg_total_relation_size(c.oid)) FILTER (WHERE c.relname <> 'processed'), 0)::bigint,
		coalesce(sum(pg_total_relation_size(c.oid)) FILTER (WHERE c.relname = 'processed'), 0)::bigint
		FROM pg_class c WHERE c.relnamespace = 'postbox'::regnamespace AND c.relkind = 'r'`).Scan(&queue, &processed)
	return queue, processed, err
}
