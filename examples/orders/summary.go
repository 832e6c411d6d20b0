package main

import (
	"context"
	"fmt"
	"time"

	"github.com/postbox-dev/postbox"
)

// Summary is the outcome of the run, every number counted in the database
// (see README.md for the exact definitions).
type Summary struct {
	Published  int64 // messages the program's producers wrote (message_log)
	Handled    int64 // distinct (subscriber, message) pairs with an effect row
	Duplicates int64 // effect rows beyond one per (subscriber, message)
	Lost       int64 // expected deliveries with neither an effect nor a dead letter
	Dead       int64 // dead letters remaining
	Replayed   int64 // rows in postbox.replays
}

func (s Summary) String() string {
	return fmt.Sprintf("orders: published=%d handled=%d duplicates=%d lost=%d dead=%d replayed=%d",
		s.Published, s.Handled, s.Duplicates, s.Lost, s.Dead, s.Replayed)
}

// summarySQL is one statement, so every count comes from the same snapshot.
const summarySQL = `
WITH handled AS (SELECT DISTINCT subscriber, message_id FROM effects)
SELECT
    (SELECT count(*) FROM message_log),
    (SELECT count(*) FROM handled),
    (SELECT count(*) FROM effects) - (SELECT count(*) FROM handled),
    (SELECT count(*) FROM expected_deliveries x
      WHERE NOT EXISTS (SELECT 1 FROM handled h
                        WHERE h.subscriber = x.subscriber AND h.message_id = x.message_id)
        AND NOT EXISTS (SELECT 1 FROM postbox.dead_letters d
                        WHERE d.subscriber = x.subscriber AND d.message_id = x.message_id)),
    (SELECT count(*) FROM postbox.dead_letters),
    (SELECT count(*) FROM postbox.replays)`

func readSummary(ctx context.Context, db postbox.DBTX) (Summary, error) {
	var s Summary
	err := db.QueryRow(ctx, summarySQL).Scan(&s.Published, &s.Handled, &s.Duplicates, &s.Lost, &s.Dead, &s.Replayed)
	if err != nil {
		return Summary{}, fmt.Errorf("summary: %w", err)
	}
	return s, nil
}

// openWorkSQL counts what is still in flight: messages the relay has not
// moved yet, and deliveries waiting for a consumer or for their next retry.
// A handler's new messages commit together with its delivery's completion,
// so zero here, in one snapshot, means everything has settled: every
// delivery is handled or dead.
const openWorkSQL = `
SELECT (SELECT count(*) FROM postbox.outbox)
     + (SELECT coalesce(sum(ready + waiting), 0) FROM postbox.queue_depths)`

// settleTimeout bounds each wait; the whole example takes about a second.
const settleTimeout = 10 * time.Second

// waitSettled polls until no work is open, or fails after settleTimeout.
// Polling a condition with a deadline is how the example waits; no sleep
// stands in for synchronization.
func waitSettled(ctx context.Context, db postbox.DBTX) error {
	ctx, cancel := context.WithTimeout(ctx, settleTimeout)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	open := int64(-1) // unknown until the first count
	for {
		var n int64
		err := db.QueryRow(ctx, openWorkSQL).Scan(&n)
		if err == nil && n == 0 {
			return nil
		}
		if err == nil {
			open = n
		}
		if ctx.Err() != nil {
			return fmt.Errorf("wait for deliveries to settle: %d still open: %w", open, ctx.Err())
		}
		if err != nil {
			return fmt.Errorf("wait for deliveries to settle: %w", err)
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}
