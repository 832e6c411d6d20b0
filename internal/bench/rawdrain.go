package bench

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/postbox-dev/postbox/internal/benchkit"
)

// rawWorkers and rawBatch shape the raw drain pipeline like a consumer with
// the library's defaults: 4 workers, batches of 100.
const (
	rawWorkers = 4
	rawBatch   = 100
)

// rawDrain is drain's hand-written SQL baseline (--baseline raw): the same
// messages through a relay statement into an inbox table, claimed with
// SKIP LOCKED by 4 workers in batches of 100, each batch one multi-row
// effect INSERT, a delete of the batch plus an insert of its IDs into a
// processed table, and a commit. It is the ceiling a BatchHandler drain is
// measured against: what the same work costs with nothing of postbox's
// guarantees machinery around it.
func rawDrain(ctx context.Context, e *env, db *pgxpool.Pool, n, keys int, pin bool, timeout time.Duration) (benchkit.Sample, error) {
	const queue = "bench-drain"
	for at := 0; at < n; at += 10000 {
		rows, err := benchkit.RawRows(at, min(10000, n-at), queue, keys)
		if err != nil {
			return benchkit.Sample{}, err
		}
		if _, err := db.CopyFrom(ctx, tables.RawOutbox, benchkit.RawColumns, pgx.CopyFromRows(rows)); err != nil {
			return benchkit.Sample{}, fmt.Errorf("raw preload: %w", err)
		}
	}
	if pin {
		stop, err := e.PinHorizon(ctx)
		if err != nil {
			return benchkit.Sample{}, err
		}
		defer stop()
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	var handled atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	wg.Go(func() {
		for runCtx.Err() == nil {
			tag, err := db.Exec(runCtx, sqlRawRelay, 1000)
			if err != nil {
				if runCtx.Err() == nil {
					failed.Store(err)
				}
				return
			}
			if tag.RowsAffected() == 0 {
				time.Sleep(time.Millisecond) // nothing left: the raw relay just polls
			}
		}
	})
	for range rawWorkers {
		wg.Go(func() {
			for runCtx.Err() == nil {
				got, err := rawBatchOnce(runCtx, db)
				if err != nil {
					if runCtx.Err() == nil {
						failed.Store(err)
					}
					return
				}
				handled.Add(int64(got))
				if got == 0 {
					time.Sleep(time.Millisecond)
				}
			}
		})
	}
	elapsed, err := benchkit.WaitFor(ctx, timeout, func() bool { return handled.Load() >= int64(n) || failed.Load() != nil })
	stop()
	wg.Wait()
	if f := failed.Load(); f != nil {
		return benchkit.Sample{}, fmt.Errorf("raw drain: %w", f.(error))
	}
	if err != nil {
		return benchkit.Sample{}, err
	}
	if err := tables.CheckEffects(ctx, db, int64(n)); err != nil {
		return benchkit.Sample{}, fmt.Errorf("raw drain: %w", err)
	}
	return benchkit.Sample{Seconds: elapsed.Seconds()}, nil
}

// rawBatchOnce claims, handles and commits one raw batch.
func rawBatchOnce(ctx context.Context, db *pgxpool.Pool) (int, error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	rows, err := tx.Query(ctx, sqlRawClaim, rawBatch)
	if err != nil {
		return 0, err
	}
	var ids []int64
	var msgIDs []string
	for rows.Next() {
		var id int64
		var mid uuid.UUID
		if err := rows.Scan(&id, &mid); err != nil {
			return 0, err
		}
		ids = append(ids, id)
		msgIDs = append(msgIDs, mid.String())
	}
	if err := rows.Err(); err != nil {
		return 0, err
	}
	if len(ids) == 0 {
		return 0, tx.Commit(ctx)
	}
	if _, err := tx.Exec(ctx, sqlInsertEffects, "bench-drain", msgIDs); err != nil {
		return 0, err
	}
	if _, err := tx.Exec(ctx, sqlRawFinish, ids); err != nil {
		return 0, err
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, err
	}
	return len(ids), nil
}
