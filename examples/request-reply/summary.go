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
	Requests    int64 // stock queries the inventory service answered (stock_queries)
	Answered    int64 // replies Requests received in time (answers)
	Late        int64 // replies that came after their Request gave up, handled by the Handler
	Async       int64 // replies to reservations' asynchronous queries, handled by the Handler
	Replies     int64 // replies checkout received in all: answered + late + async
	Duplicates  int64 // rows beyond one per request or reply, in any of those tables
	Dead        int64 // dead letters
	ReplyQueues int64 // reply queues of checkout still declared at the end
}

func (s Summary) String() string {
	return fmt.Sprintf("request-reply: requests=%d answered=%d late=%d async=%d replies=%d duplicates=%d dead=%d reply_queues=%d",
		s.Requests, s.Answered, s.Late, s.Async, s.Replies, s.Duplicates, s.Dead, s.ReplyQueues)
}

// replyQueuesSQL counts checkout's declared reply queues.
const replyQueuesSQL = `SELECT count(*) FROM postbox.subscribers WHERE kind = 'queue' AND name LIKE 'checkout.reply.%'`

// summarySQL is one statement, so every count comes from the same snapshot.
const summarySQL = `
SELECT (SELECT count(DISTINCT request_id) FROM stock_queries),
       (SELECT count(*) FROM answers),
       (SELECT count(*) FROM handled_replies WHERE kind = 'late'),
       (SELECT count(*) FROM handled_replies WHERE kind = 'async'),
       (SELECT count(*) FROM answers) + (SELECT count(*) FROM handled_replies),
       (SELECT count(*) - count(DISTINCT request_id) FROM stock_queries)
     + (SELECT count(*) - count(DISTINCT request_id) FROM answers)
     + (SELECT count(*) - count(DISTINCT reply_id) FROM handled_replies)
     + (SELECT count(*) FROM (SELECT request_id FROM answers
                              INTERSECT SELECT request_id FROM handled_replies) both_ways),
       (SELECT count(*) FROM postbox.dead_letters),
       (` + replyQueuesSQL + `)`

func readSummary(ctx context.Context, db postbox.DBTX) (Summary, error) {
	var s Summary
	err := db.QueryRow(ctx, summarySQL).Scan(&s.Requests, &s.Answered, &s.Late, &s.Async, &s.Replies,
		&s.Duplicates, &s.Dead, &s.ReplyQueues)
	if err != nil {
		return Summary{}, fmt.Errorf("summary: %w", err)
	}
	return s, nil
}

// openWorkSQL counts what is still in flight: messages the relay has not
// moved yet, and deliveries waiting for a consumer. A handler's reply
// commits with its delivery's completion, so zero here, in one snapshot,
// means every query and every reply has been handled.
const openWorkSQL = `
SELECT (SELECT count(*) FROM postbox.outbox)
     + (SELECT coalesce(sum(ready + waiting), 0) FROM postbox.queue_depths)`

// waitSettled polls until no work is open, or fails after 10 seconds.
func waitSettled(ctx context.Context, db postbox.DBTX) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		var n int64
		err := db.QueryRow(ctx, openWorkSQL).Scan(&n)
		if err == nil && n == 0 {
			return nil
		}
		if err != nil {
			return fmt.Errorf("wait for the queries and replies to settle: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the queries and replies to settle: %d still open: %w", n, ctx.Err())
		case <-tick.C:
		}
	}
}
