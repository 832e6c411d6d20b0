package main

import (
	"context"
	"fmt"
	"time"

	"github.com/postbox-dev/postbox"
)

// Summary is the outcome of the run, every number counted in the database
// (see README.md).
type Summary struct {
	Orders     int64 // rows in orders
	Requests   int64 // quote requests the services handled (postbox.processed)
	Replies    int64 // quotes the gather's reply queue handled (postbox.processed)
	Quotes     int64 // combined quotes checkout recorded
	Complete   int64 // ... of them with every service's quote
	TimedOut   int64 // ... of them completed at the timeout with what came
	Late       int64 // quotes that came after their gather completed
	Duplicates int64 // combined quotes beyond one per order, and quotes given twice
	Dead       int64 // dead letters left
}

func (s Summary) String() string {
	return fmt.Sprintf("scatter-gather: orders=%d requests=%d replies=%d quotes=%d complete=%d timed_out=%d late=%d duplicates=%d dead=%d",
		s.Orders, s.Requests, s.Replies, s.Quotes, s.Complete, s.TimedOut, s.Late, s.Duplicates, s.Dead)
}

// summarySQL is one statement, so every count comes from the same snapshot.
const summarySQL = `
SELECT (SELECT count(*) FROM orders),
       (SELECT count(*) FROM postbox.processed WHERE subscriber IN ('inventory', 'payment', 'shipping')),
       (SELECT count(*) FROM postbox.processed WHERE subscriber = 'quotes.replies'),
       (SELECT count(*) FROM quotes),
       (SELECT count(*) FROM quotes WHERE NOT timed_out),
       (SELECT count(*) FROM quotes WHERE timed_out),
       (SELECT count(*) FROM late_quotes),
       (SELECT count(*) - count(DISTINCT order_id) FROM quotes)
     + (SELECT count(*) FROM (SELECT 1 FROM quotes_given GROUP BY service, order_id HAVING count(*) > 1) twice),
       (SELECT count(*) FROM postbox.dead_letters)`

func readSummary(ctx context.Context, db postbox.DBTX) (Summary, error) {
	var s Summary
	err := db.QueryRow(ctx, summarySQL).Scan(&s.Orders, &s.Requests, &s.Replies, &s.Quotes, &s.Complete,
		&s.TimedOut, &s.Late, &s.Duplicates, &s.Dead)
	if err != nil {
		return Summary{}, fmt.Errorf("summary: %w", err)
	}
	return s, nil
}

// openWorkSQL counts what is still in flight: messages the relay has not
// moved yet, and deliveries waiting for a consumer.
const openWorkSQL = `
SELECT (SELECT count(*) FROM postbox.outbox)
     + (SELECT coalesce(sum(ready + waiting), 0) FROM postbox.queue_depths)`

// waitSettled polls until no work is open.
func waitSettled(ctx context.Context, db postbox.DBTX) error {
	return waitFor(ctx, db, "deliveries to settle", `SELECT (`+openWorkSQL+`) = $1`, 0)
}

// waitFor polls the yes-or-no query until it says yes, or fails after 10
// seconds. Polling a condition with a deadline is how the example waits;
// no sleep stands in for synchronization.
func waitFor(ctx context.Context, db postbox.DBTX, what, sql string, arg int) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		var yes bool
		if err := db.QueryRow(ctx, sql, arg).Scan(&yes); err != nil {
			return fmt.Errorf("wait for %s: %w", what, err)
		}
		if yes {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w", what, ctx.Err())
		case <-tick.C:
		}
	}
}
