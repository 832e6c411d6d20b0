package bench

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/benchkit"
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
		db, err := e.Pool(ctx, *publishers+connsPerConsumer+2)
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
		stopProgress := e.Every(func() {
			e.Logf("  published %d, handled %d", published.Load(), c.Stats().Handled)
		})
		defer stopProgress()

		publish := func(first, n int) (time.Duration, error) {
			return benchkit.OpenLoop(ctx, *rate, *publishers, first, n, func(ctx context.Context, i int) error {
				msg, _ := benchkit.NewMessage(i, queue, *keys)
				if err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error { return outbox.Send(ctx, tx, msg) }); err != nil {
					return err
				}
				commitAt[i].Store(time.Now().UnixNano())
				published.Add(1)
				return nil
			})
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
		if _, err := benchkit.WaitFor(ctx, *timeout, func() bool { return c.Stats().Handled >= want }); err != nil {
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
			e.Logf("%d handlers started before their publisher saw its commit return", early)
		}
		if relayedAt != nil {
			toRelay := make([]time.Duration, 0, total)
			toHandler := make([]time.Duration, 0, total)
			for i := warm; i < warm+total; i++ {
				toRelay = append(toRelay, time.Duration(relayedAt[i].Load()-commitAt[i].Load()))
				toHandler = append(toHandler, time.Duration(startAt[i].Load()-relayedAt[i].Load()))
			}
			p50, p99 := benchkit.Percentiles(toRelay)
			e.Logf("commit to relay transaction start: p50 %.2fms p99 %.2fms", benchkit.Millis(p50), benchkit.Millis(p99))
			p50, p99 = benchkit.Percentiles(toHandler)
			e.Logf("relay transaction start to handler start: p50 %.2fms p99 %.2fms", benchkit.Millis(p50), benchkit.Millis(p99))
		}
		res := result{Msgs: total, Seconds: elapsed.Seconds(), HasLatency: true}
		res.P50, res.P99 = benchkit.Percentiles(lats)
		if *pinFor > 0 {
			extra, err := pin.report(ctx, db, lats, commitAt[warm:warm+total])
			if err != nil {
				return result{}, err
			}
			res.Extra = extra
		}
		e.LogLatency(lats)
		return res, nil
	}
}

// seqOf reads the sequence number a bench message carries.
func seqOf(payload []byte) (int, error) {
	var o struct {
		Seq int `json:"seq"`
	}
	if err := json.Unmarshal(payload, &o); err != nil {
		return 0, err
	}
	return o.Seq, nil
}
