package reqreply

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/db"
)

// maxSweepBatches bounds the batches one sweep handles per orphaned queue;
// the rest waits for the next sweep.
const maxSweepBatches = 100

// Sweep cleans up after Requesters of the same Name that are gone. A reply
// queue is orphaned when the session lock its Requester holds while it
// runs is free: the Requester stopped, or crashed and its connection
// ended. Sweep handles the replies waiting in each orphaned queue as late
// replies (Config.Handler, or dead letters with ErrLateReply), holding the
// queue's lock meanwhile so that one sweeper at a time works it, and drops
// the queue once it has nothing pending and has been orphaned for at least
// Config.Expiry, as this Requester has seen it. Dead letters of a dropped
// queue stay, for dlq. It returns how many queues it dropped. Run calls it
// every SweepInterval.
func (r *Requester) Sweep(ctx context.Context) (int, error) {
	queues, err := db.New(r.pool).ReplyQueues(ctx, r.cfg.Name+replyInfix)
	if err != nil {
		return 0, fmt.Errorf("reqreply: sweep: list reply queues: %w", err)
	}
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	dropped := 0
	seen := map[string]bool{}
	for _, q := range queues {
		if q == r.queue {
			continue
		}
		seen[q] = true
		if conn == nil {
			if conn, err = pgx.ConnectConfig(ctx, r.pool.Config().ConnConfig.Copy()); err != nil {
				return dropped, fmt.Errorf("reqreply: sweep: connect: %w", err)
			}
		}
		gone, err := r.sweepQueue(ctx, conn, q)
		if err != nil {
			return dropped, err
		}
		if gone {
			dropped++
		}
	}
	r.mu.Lock()
	for q := range r.orphans {
		if !seen[q] {
			delete(r.orphans, q) // dropped by another sweeper
		}
	}
	r.mu.Unlock()
	return dropped, nil
}

// sweepQueue works one reply queue under its lock, taken on conn, and
// reports whether it dropped it.
func (r *Requester) sweepQueue(ctx context.Context, conn *pgx.Conn, queue string) (dropped bool, err error) {
	q := db.New(conn)
	locked, err := q.TryLockReplyQueue(ctx, queue)
	if err != nil {
		return false, fmt.Errorf("reqreply: sweep %s: lock: %w", queue, err)
	}
	if !locked {
		r.mu.Lock()
		delete(r.orphans, queue) // in use (or being swept)
		r.mu.Unlock()
		return false, nil
	}
	defer func() {
		if _, uerr := q.UnlockReplyQueue(context.Background(), queue); uerr != nil && err == nil {
			err = fmt.Errorf("reqreply: sweep %s: unlock: %w", queue, uerr)
		}
	}()
	now := time.Now()
	r.mu.Lock()
	since, known := r.orphans[queue]
	if !known {
		r.orphans[queue], since = now, now
	}
	r.mu.Unlock()

	c, err := inbox.NewConsumer(r.pool, inbox.Config{Subscriber: queue, Handler: inbox.HandlerFunc(r.late),
		Concurrency: 1, NoListen: true, Logger: r.cfg.Logger})
	if err != nil {
		return false, err
	}
	for range maxSweepBatches {
		n, err := c.RunOnce(ctx)
		if errors.Is(err, dispatcher.ErrNotFound) {
			return false, nil // dropped meanwhile
		}
		if err != nil {
			return false, fmt.Errorf("reqreply: sweep %s: %w", queue, err)
		}
		if n == 0 {
			break
		}
	}
	pending, err := db.New(r.pool).ReplyQueuePending(ctx, queue)
	if err != nil {
		return false, fmt.Errorf("reqreply: sweep %s: %w", queue, err)
	}
	if pending > 0 || time.Since(since) < r.cfg.Expiry {
		return false, nil
	}
	if err := dispatcher.DropSubscriber(ctx, r.pool, queue); err != nil && !errors.Is(err, dispatcher.ErrNotFound) {
		return false, fmt.Errorf("reqreply: sweep: %w", err)
	}
	r.mu.Lock()
	delete(r.orphans, queue)
	r.mu.Unlock()
	r.cfg.Logger.Info("dropped the reply queue of a gone requester", "reply_queue", queue)
	return true, nil
}
