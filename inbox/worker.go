package inbox

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/postbox-dev/postbox/internal/notify"
)

// How workers share the work without a herd. An idle worker waits for a
// token; the coordinator hands out one token per wake-up (a relay
// notification, or a poll when every worker is idle), and a worker that
// claimed a full batch hands one on before handling it, since more is
// likely waiting. So one notification for one message costs one claim, and
// a burst brings in one more worker per full batch. Idle, the consumer
// polls with one worker at a time, backing off with jitter up to
// MaxPollInterval: an empty claim is one read-only statement.

// coordinator hands out work tokens.
type coordinator struct {
	tokens   chan struct{}
	idle     atomic.Int32 // workers waiting for a token
	workSeen atomic.Bool  // a claim found work since the last poll
}

func (c *coordinator) init(workers int) {
	c.tokens = make(chan struct{}, workers)
}

// wakeOne hands a token to an idle worker (or to the next one to go idle).
func (c *coordinator) wakeOne() {
	select {
	case c.tokens <- struct{}{}:
	default: // every worker already has one coming
	}
}

// wait blocks until a token arrives or ctx ends.
func (c *coordinator) wait(ctx context.Context) bool {
	c.idle.Add(1)
	defer c.idle.Add(-1)
	select {
	case <-ctx.Done():
		return false
	case <-c.tokens:
		return true
	}
}

// poll wakes a worker on every notification, and while no work is seen
// polls with a growing, jittered interval.
func (c *coordinator) poll(ctx context.Context, wake *notify.Listener, base, limit time.Duration) {
	interval := base
	for {
		woken := wake.C()
		if !notify.Sleep(ctx, jitter(interval), woken) {
			return
		}
		select {
		case <-woken:
			interval = base // a wake-up: work is coming
		default:
			if c.workSeen.Swap(false) {
				interval = base
			} else {
				interval = min(2*interval, limit)
			}
		}
		c.wakeOne()
	}
}

// jitter spreads d by ±20%, so consumers of many processes do not poll in
// lockstep.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return d - d/5 + time.Duration(rand.Int64N(int64(2*d/5)+1))
}

// busyParts are the order partitions this process's workers own now, which
// their siblings' claims skip.
type busyParts struct {
	mu    sync.Mutex
	parts map[int16]int
}

func (b *busyParts) list() []int16 {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]int16, 0, len(b.parts))
	for p := range b.parts {
		out = append(out, p)
	}
	return out
}

func (b *busyParts) add(parts []int16) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.parts == nil {
		b.parts = make(map[int16]int)
	}
	for _, p := range parts {
		b.parts[p]++
	}
}

func (b *busyParts) remove(parts []int16) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, p := range parts {
		if b.parts[p]--; b.parts[p] <= 0 {
			delete(b.parts, p)
		}
	}
}

// work is one worker's loop.
func (c *Consumer) work(ctx context.Context, log *slog.Logger) {
	w := newWorker(c)
	wait := c.cfg.PollInterval
	for ctx.Err() == nil {
		n, err := w.once(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			log.Error("batch failed", "err", err, "retry_in", wait)
			if !notify.Sleep(ctx, jitter(wait), nil) {
				return
			}
			wait = min(2*wait, c.cfg.MaxPollInterval)
			continue
		case n > 0:
			// More may be ready: claim again at once. Only an empty claim
			// means nothing is.
			wait = c.cfg.PollInterval
			continue
		}
		if !c.coord.wait(ctx) {
			return
		}
	}
}

// worker is one worker's state: how large its batches may be now (smaller
// after the server ended a batch's session), and whether its next claim
// must look for second copies of handled messages.
type worker struct {
	c *Consumer
	workerState
}

// workerState is what a worker's batches leave for the next one.
type workerState struct {
	limit    int  // batch size now
	dedup    bool // look up handled IDs before the next batch
	isolated int  // claims still to take one delivery at a time
}

func newWorker(c *Consumer) *worker {
	return &worker{c: c, workerState: workerState{limit: c.cfg.BatchSize}}
}

// size is the batch size of the next claim.
func (w *worker) size() int {
	if w.isolated > 0 {
		w.isolated--
		return 1
	}
	return w.limit
}
