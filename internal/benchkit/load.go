package benchkit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// ClosedLoop calls one(ctx, i) for every i from 0 to n-1, from producers
// goroutines that each take the next i as soon as their last call returned,
// and returns the time it all took with each call's latency. The first
// error stops the others. Progress is reported as label's transactions.
func (e *Env) ClosedLoop(ctx context.Context, label string, n, producers int, one func(ctx context.Context, i int) error) (Sample, error) {
	var next, done atomic.Int64
	lats := make([][]time.Duration, producers)
	errs := make([]error, producers)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := e.Every(func() { e.Logf("  %s: %d/%d transactions", label, done.Load(), n) })
	start := time.Now()
	var wg sync.WaitGroup
	for p := range producers {
		lats[p] = make([]time.Duration, 0, n/producers+1)
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				t0 := time.Now()
				if err := one(ctx, i); err != nil {
					errs[p] = err
					cancel()
					return
				}
				lats[p] = append(lats[p], time.Since(t0))
				done.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	stop()
	if err := errors.Join(errs...); err != nil {
		return Sample{}, err
	}
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	return Sample{Seconds: elapsed.Seconds(), Lat: all}, nil
}

// OpenLoop calls send(ctx, i) for every i from first to first+n-1, due at
// rate a second from its start, from publishers goroutines: the schedule
// never waits for them (open loop), a call due while all are busy waits in
// a queue. It returns the time from the start until the last call returned.
// The first error stops the rest.
func OpenLoop(ctx context.Context, rate, publishers, first, n int, send func(ctx context.Context, i int) error) (time.Duration, error) {
	jobs := make(chan int, n) // the schedule never blocks on publishers
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make([]error, publishers)
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			for i := range jobs {
				if ctx.Err() != nil {
					return
				}
				if err := send(ctx, i); err != nil {
					errs[p] = err
					cancel()
					return
				}
			}
		})
	}
	start := time.Now()
	interval := time.Second / time.Duration(rate)
	timer := time.NewTimer(0)
	defer timer.Stop()
schedule:
	for i := range n {
		due := start.Add(time.Duration(i) * interval)
		if wait := time.Until(due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				break schedule
			case <-timer.C:
			}
		}
		jobs <- first + i
	}
	close(jobs)
	wg.Wait()
	return time.Since(start), errors.Join(errs...)
}

// WaitFor polls done every millisecond and returns the time from its call
// until done reported true. done must be cheap.
func WaitFor(ctx context.Context, timeout time.Duration, done func() bool) (time.Duration, error) {
	start := time.Now()
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for !done() {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-deadline.C:
			return 0, fmt.Errorf("not done after %s", timeout)
		case <-t.C:
		}
	}
	return time.Since(start), nil
}

// Batches calls one(ctx, first, size) for consecutive batches of at most
// batch of n messages, one after the other, and returns the time it all
// took. Progress is reported as label's messages.
func (e *Env) Batches(ctx context.Context, label string, n, batch int, one func(ctx context.Context, first, size int) error) (Sample, error) {
	var done atomic.Int64
	stop := e.Every(func() { e.Logf("  %s: %d/%d messages", label, done.Load(), n) })
	defer stop()
	start := time.Now()
	for first := 0; first < n; first += batch {
		size := min(batch, n-first)
		if err := one(ctx, first, size); err != nil {
			return Sample{}, fmt.Errorf("batch at %d: %w", first, err)
		}
		done.Add(int64(size))
	}
	return Sample{Seconds: time.Since(start).Seconds()}, nil
}
