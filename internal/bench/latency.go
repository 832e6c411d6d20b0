package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

func latencyFlags(fs *flag.FlagSet) func(context.Context, *env) (result, error) {
	rate := fs.Int("rate", 1000, "messages per second, each sent in its own transaction")
	duration := fs.Duration("duration", 20*time.Second, "how long to publish (after a one-second warm-up that is not counted)")
	publishers := fs.Int("publishers", 16, "connections that publish; the schedule never waits for them (open loop)")
	keys := fs.Int("keys", 0, "distinct message keys (0: messages have no key)")
	timeout := fs.Duration("timeout", time.Minute, "how long to wait, after publishing, for the last handler to start")
	pinAt := fs.Duration("pin-at", 0, "hold a transaction that pins the xmin horizon (as drain --pin does) from this long into the timed phase...")
	pinFor := fs.Duration("pin-for", 0, "...for this long (0: no pin); p99 before, during and after the pin, and the queue tables' sizes, are reported")
	breakdown := fs.Bool("breakdown", false, "also split the latency at the relay (Delivery.EnqueuedAt): commit to relay transaction start, and from there to handler start; printed on stderr")
	return func(ctx context.Context, e *env) (result, error) {
		if *rate < 1 || *duration <= 0 || *publishers < 1 {
			return result{}, errors.New("--rate, --duration and --publishers must be positive")
		}
		warm := *rate
		total := int(float64(*rate) * duration.Seconds())
		if total < 1 {
			return result{}, errors.New("--rate × --duration is less than one message")
		}
		if total+warm > 100_000_000 {
			return result{}, errors.New("--rate × --duration: at most 100 million messages")
		}
		db, err := e.pool(ctx, *publishers+connsPerConsumer+2)
		if err != nil {
			return result{}, err
		}
		if err := e.reset(ctx, db); err != nil {
			return result{}, err
		}
		const queue = "bench-latency"
		if err := dispatcher.DeclareQueue(ctx, db, queue, dispatcher.Options{}); err != nil {
			return result{}, err
		}

		// Times are kept by sequence number, which each message carries in
		// its payload: memory is bounded by rate × duration.
		commitAt := make([]atomic.Int64, warm+total)
		startAt := make([]atomic.Int64, warm+total)
		var relayedAt []atomic.Int64
		if *breakdown {
			relayedAt = make([]atomic.Int64, warm+total)
		}
		handler := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
			now := time.Now().UnixNano()
			seq, err := seqOf(d.Payload)
			if err != nil || seq < 0 || seq >= len(startAt) {
				return fmt.Errorf("bench message without a valid seq: %v", err)
			}
			startAt[seq].CompareAndSwap(0, now)
			if relayedAt != nil {
				relayedAt[seq].CompareAndSwap(0, d.EnqueuedAt.UnixNano())
			}
			return insertEffect(ctx, tx, d.Subscriber, d.ID.String())
		})
		r, err := relay.New(db, relay.Config{})
		if err != nil {
			return result{}, err
		}
		c, err := inbox.NewConsumer(db, inbox.Config{Subscriber: queue, Handler: handler})
		if err != nil {
			return result{}, err
		}
		runCtx, stopRun := context.WithCancel(ctx)
		var running sync.WaitGroup
		running.Go(func() { _ = r.Run(runCtx) })
		running.Go(func() { _ = c.Run(runCtx) })
		defer func() { stopRun(); running.Wait() }()

		var published atomic.Int64
		stopProgress := e.every(func() {
			e.logf("  published %d, handled %d", published.Load(), c.Stats().Handled)
		})
		defer stopProgress()

		publish := func(from, n int) (time.Duration, error) {
			jobs := make(chan int, n) // the schedule never blocks on publishers
			pctx, cancel := context.WithCancel(ctx)
			defer cancel()
			errs := make([]error, *publishers)
			var wg sync.WaitGroup
			for p := range *publishers {
				wg.Go(func() {
					for i := range jobs {
						if pctx.Err() != nil {
							return
						}
						msg, _ := newOrder(i, queue, *keys)
						if err := pgx.BeginFunc(pctx, db, func(tx pgx.Tx) error { return outbox.Send(pctx, tx, msg) }); err != nil {
							errs[p] = err
							cancel()
							return
						}
						commitAt[i].Store(time.Now().UnixNano())
						published.Add(1)
					}
				})
			}
			start := time.Now()
			interval := time.Second / time.Duration(*rate)
			timer := time.NewTimer(0)
			defer timer.Stop()
		schedule:
			for i := range n {
				due := start.Add(time.Duration(i) * interval)
				if wait := time.Until(due); wait > 0 {
					timer.Reset(wait)
					select {
					case <-pctx.Done():
						break schedule
					case <-timer.C:
					}
				}
				jobs <- from + i
			}
			close(jobs)
			wg.Wait()
			return time.Since(start), errors.Join(errs...)
		}

		if _, err := publish(0, warm); err != nil {
			return result{}, fmt.Errorf("warm-up: %w", err)
		}
		var pin pinWindow
		if *pinFor > 0 {
			stopPin := pin.schedule(ctx, e, db, *pinAt, *pinFor)
			defer stopPin()
		}
		elapsed, err := publish(warm, total)
		if err != nil {
			return result{}, err
		}
		want := int64(warm + total)
		if _, err := waitFor(ctx, *timeout, func() bool { return c.Stats().Handled >= want }); err != nil {
			return result{}, fmt.Errorf("handlers: %w: handled %d of %d", err, c.Stats().Handled, want)
		}
		lats := make([]time.Duration, 0, total)
		early := 0
		for i := warm; i < warm+total; i++ {
			d := time.Duration(startAt[i].Load() - commitAt[i].Load())
			if d < 0 {
				// The handler started before the publisher read the clock
				// after Commit returned: the latency is below what we
				// can see.
				early++
				d = 0
			}
			lats = append(lats, d)
		}
		if early > 0 {
			e.logf("%d handlers started before their publisher saw its commit return", early)
		}
		if relayedAt != nil {
			toRelay := make([]time.Duration, 0, total)
			toHandler := make([]time.Duration, 0, total)
			for i := warm; i < warm+total; i++ {
				toRelay = append(toRelay, time.Duration(relayedAt[i].Load()-commitAt[i].Load()))
				toHandler = append(toHandler, time.Duration(startAt[i].Load()-relayedAt[i].Load()))
			}
			p50, p99 := percentiles(toRelay)
			e.logf("commit to relay transaction start: p50 %.2fms p99 %.2fms", ms(p50), ms(p99))
			p50, p99 = percentiles(toHandler)
			e.logf("relay transaction start to handler start: p50 %.2fms p99 %.2fms", ms(p50), ms(p99))
		}
		res := result{msgs: total, seconds: elapsed.Seconds(), hasLatency: true}
		res.p50, res.p99 = percentiles(lats)
		if *pinFor > 0 {
			extra, err := pin.report(ctx, db, lats, commitAt[warm:warm+total])
			if err != nil {
				return result{}, err
			}
			res.extra = extra
		}
		s := slices.Clone(lats)
		slices.Sort(s)
		e.logf("latency: p50 %.2fms p90 %.2fms p99 %.2fms p99.9 %.2fms max %.2fms", ms(percentile(s, 50)),
			ms(percentile(s, 90)), ms(percentile(s, 99)), ms(percentile(s, 99.9)), ms(s[len(s)-1]))
		return res, nil
	}
}
