package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/benchkit"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

// Connections a consumer with the default Config uses: one per worker and
// one that listens for the relay's wake-ups.
const connsPerConsumer = inbox.DefaultConcurrency + 1

// effectHandler writes one effect row through the delivery's transaction.
var effectHandler = inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	return insertEffect(ctx, tx, d.Subscriber, d.ID.String())
})

// effectBatchHandler writes the effect rows of a whole batch in one INSERT.
var effectBatchHandler = inbox.BatchHandlerFunc(func(ctx context.Context, tx pgx.Tx, batch []*inbox.Delivery) error {
	ids := make([]string, len(batch))
	for i, d := range batch {
		ids[i] = d.ID.String()
	}
	_, err := tx.Exec(ctx, sqlInsertEffects, batch[0].Subscriber, ids)
	return err
})

// preload writes n messages through the outbox, batch per transaction
// (outbox.SendBatch to a queue, or outbox.PublishBatch to a topic). Setup,
// not timed.
func preload(ctx context.Context, e *env, db *pgxpool.Pool, topic string, queue bool, first, n, keys int) error {
	const batch = 10000
	for at := first; at < first+n; at += batch {
		size := min(batch, first+n-at)
		msgs := make([]*postbox.Message, size)
		for j := range msgs {
			msgs[j], _ = benchkit.NewMessage(at+j, topic, keys)
		}
		err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
			if queue {
				return outbox.SendBatch(ctx, tx, msgs)
			}
			return outbox.PublishBatch(ctx, tx, msgs)
		})
		if err != nil {
			return fmt.Errorf("preload: %w", err)
		}
		if done := at + size - first; done%100000 == 0 || done == n {
			e.Logf("preloaded %d/%d messages", done, n)
		}
	}
	return nil
}

// drainSetup is one consume run: the subscribers to run consumers for, and
// how many effect rows mark the end.
type drainSetup struct {
	subscribers []string
	consumers   int // Consumer instances per subscriber, library defaults each
	want        int64
	timeout     time.Duration
	// batchHandler: an inbox.BatchHandler writing a batch's effects in one
	// INSERT, instead of effectHandler.
	batchHandler bool
	// skipHandled: effect rows already there (a warm-up drain), not timed
	skipHandled int64
}

// consumeAll starts one relay and the consumers, all with the library's
// default configuration, and returns the time until want deliveries have
// been handled and committed. It then checks that the effect table holds
// exactly want rows, one per (subscriber, message).
func consumeAll(ctx context.Context, e *env, db *pgxpool.Pool, s drainSetup) (time.Duration, error) {
	r, err := relay.New(db, relay.Config{})
	if err != nil {
		return 0, err
	}
	var cs []*inbox.Consumer
	for _, sub := range s.subscribers {
		for range s.consumers {
			cfg := inbox.Config{Subscriber: sub, Handler: effectHandler}
			if s.batchHandler {
				cfg = inbox.Config{Subscriber: sub, BatchHandler: effectBatchHandler}
			}
			c, err := inbox.NewConsumer(db, cfg)
			if err != nil {
				return 0, err
			}
			cs = append(cs, c)
		}
	}
	handled := func() int64 {
		var n int64
		for _, c := range cs {
			n += c.Stats().Handled
		}
		return n
	}

	runCtx, stopRun := context.WithCancel(ctx)
	var wg sync.WaitGroup
	start := time.Now()
	wg.Go(func() { _ = r.Run(runCtx) })
	for _, c := range cs {
		wg.Go(func() { _ = c.Run(runCtx) })
	}
	stopProgress := e.Every(func() {
		rs := r.Stats()
		e.Logf("  relayed %d, handled %d/%d (%.0f/s)", rs.Claimed, handled(), s.want, float64(handled())/time.Since(start).Seconds())
	})
	elapsed, err := benchkit.WaitFor(ctx, s.timeout, func() bool { return handled() >= s.want-s.skipHandled })
	stopProgress()
	stopRun()
	wg.Wait()
	if err != nil {
		rs := r.Stats()
		return 0, fmt.Errorf("%w: relayed %d (errors %d), handled %d of %d", err, rs.Claimed, rs.Errors, handled(), s.want)
	}
	if err := tables.CheckEffects(ctx, db, s.want); err != nil {
		return 0, err
	}
	return elapsed, nil
}

func drainFlags(fs *flag.FlagSet) func(context.Context, *env) (result, error) {
	n := fs.Int("n", 100000, "messages preloaded into the queue")
	consumers := fs.Int("consumers", 1, "inbox.Consumer instances, each with the default Config")
	keys := fs.Int("keys", 0, "distinct message keys (0: messages have no key, so no per-key order applies)")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	warm := fs.Bool("warm", false, "drain the same number of messages once, untimed, before the timed drain, with no reset in between (warm caches and statistics)")
	batchHandler := fs.Bool("batch-handler", false, "handle with an inbox.BatchHandler that writes all effect rows of a batch in one INSERT (instead of a Handler writing one row per delivery)")
	pin := fs.Bool("pin", false, "hold a REPEATABLE READ transaction with a transaction ID open, in another database of the cluster, for the whole timed drain (it keeps vacuum from removing deleted rows)")
	var cmp benchkit.CompareFlags
	cmp.Register(fs, variantPostbox)
	return func(ctx context.Context, e *env) (result, error) {
		if *n < 1 || *consumers < 1 {
			return result{}, errors.New("--n and --consumers must be at least 1")
		}
		variants, err := cmp.Variants()
		if err != nil {
			return result{}, err
		}
		db, err := e.Pool(ctx, 2+*consumers*connsPerConsumer+rawWorkers)
		if err != nil {
			return result{}, err
		}
		run := func(ctx context.Context, variant string, n int) (benchkit.Sample, error) {
			if variant == benchkit.VariantRaw {
				return rawDrain(ctx, e, db, n, *keys, *pin, *timeout)
			}
			return drain(ctx, e, db, drainOptions{n: n, consumers: *consumers, keys: *keys, warm: *warm,
				batchHandler: *batchHandler, pin: *pin, timeout: *timeout})
		}
		if len(variants) == 1 {
			if err := e.reset(ctx, db); err != nil {
				return result{}, err
			}
			s, err := run(ctx, variantPostbox, *n)
			if err != nil {
				return result{}, err
			}
			return result{Msgs: *n, Seconds: s.Seconds}, nil
		}
		reset := func(ctx context.Context) error { return e.reset(ctx, db) }
		return cmp.Compare(ctx, e.Env, *n, min(*n/10+1, 5000), reset, run)
	}
}

// drainOptions are one postbox drain run's.
type drainOptions struct {
	n, consumers, keys int
	warm, batchHandler bool
	pin                bool
	timeout            time.Duration
}

// drain declares the queue, preloads o.n messages and times their drain
// through one relay and o.consumers consumers, all with the library's
// defaults. The tables must be fresh (reset) before.
func drain(ctx context.Context, e *env, db *pgxpool.Pool, o drainOptions) (benchkit.Sample, error) {
	const queue = "bench-drain"
	if err := dispatcher.DeclareQueue(ctx, db, queue, dispatcher.Options{}); err != nil {
		return benchkit.Sample{}, err
	}
	setup := drainSetup{subscribers: []string{queue}, consumers: o.consumers, want: int64(o.n),
		timeout: o.timeout, batchHandler: o.batchHandler}
	first := 0
	if o.warm {
		if err := preload(ctx, e, db, queue, true, 0, o.n, o.keys); err != nil {
			return benchkit.Sample{}, err
		}
		if _, err := consumeAll(ctx, e, db, setup); err != nil {
			return benchkit.Sample{}, fmt.Errorf("warm-up drain: %w", err)
		}
		first = o.n
		setup.want = int64(2 * o.n)
		setup.skipHandled = int64(o.n)
	}
	if err := preload(ctx, e, db, queue, true, first, o.n, o.keys); err != nil {
		return benchkit.Sample{}, err
	}
	if o.pin {
		stop, err := e.PinHorizon(ctx)
		if err != nil {
			return benchkit.Sample{}, err
		}
		defer stop()
	}
	elapsed, err := consumeAll(ctx, e, db, setup)
	if err != nil {
		return benchkit.Sample{}, err
	}
	return benchkit.Sample{Seconds: elapsed.Seconds()}, nil
}

func fanoutFlags(fs *flag.FlagSet) func(context.Context, *env) (result, error) {
	n := fs.Int("n", 20000, "messages published to the topic")
	subscribers := fs.Int("subscribers", 10, "subscribers of the topic, one consumer each")
	keys := fs.Int("keys", 0, "distinct message keys (0: messages have no key)")
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	return func(ctx context.Context, e *env) (result, error) {
		if *n < 1 || *subscribers < 1 || *subscribers > 99 {
			return result{}, errors.New("--n must be at least 1, --subscribers 1 to 99")
		}
		db, err := e.Pool(ctx, 2+*subscribers*connsPerConsumer)
		if err != nil {
			return result{}, err
		}
		if err := e.reset(ctx, db); err != nil {
			return result{}, err
		}
		const topic = "bench.fanout"
		subs := make([]string, *subscribers)
		for i := range subs {
			subs[i] = fmt.Sprintf("bench-fanout-%02d", i)
			if err := dispatcher.Subscribe(ctx, db, dispatcher.Subscription{Subscriber: subs[i], Topic: topic}); err != nil {
				return result{}, err
			}
		}
		if err := preload(ctx, e, db, topic, false, 0, *n, *keys); err != nil {
			return result{}, err
		}
		want := int64(*n) * int64(*subscribers)
		elapsed, err := consumeAll(ctx, e, db, drainSetup{
			subscribers: subs, consumers: 1, want: want, timeout: *timeout})
		if err != nil {
			return result{}, err
		}
		// msgs counts deliveries: each message handled by each subscriber.
		return result{Msgs: int(want), Seconds: elapsed.Seconds()}, nil
	}
}

func backlogFlags(fs *flag.FlagSet) func(context.Context, *env) (result, error) {
	n := fs.Int("n", 1000000, "older messages waiting while the fresh ones drain")
	fresh := fs.Int("fresh", 10000, "fresh messages sent through the outbox and timed")
	waiting := fs.String("waiting", "delayed", `where the older messages wait: "delayed" (pending in the same queue's inbox, due in a day) or "other" (due, in the inbox of another queue that has no consumer)`)
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after this long")
	return func(ctx context.Context, e *env) (result, error) {
		if *n < 0 || *fresh < 1 {
			return result{}, errors.New("--n must be at least 0 and --fresh at least 1")
		}
		const queue, other = "bench-backlog", "bench-backlog-other"
		var waitSub, preloadSQL string
		switch *waiting {
		case "delayed":
			waitSub, preloadSQL = queue, sqlPreloadDelayed
		case "other":
			waitSub, preloadSQL = other, sqlPreloadDue
		default:
			return result{}, fmt.Errorf("--waiting %q: want delayed or other", *waiting)
		}
		db, err := e.Pool(ctx, 2+connsPerConsumer)
		if err != nil {
			return result{}, err
		}
		if err := e.reset(ctx, db); err != nil {
			return result{}, err
		}
		for _, q := range []string{queue, other} {
			if err := dispatcher.DeclareQueue(ctx, db, q, dispatcher.Options{}); err != nil {
				return result{}, err
			}
		}
		// Setup: the waiting rows go straight into the inbox, as a relay
		// would have put them, in chunks so progress shows.
		const chunk = 100000
		for done := 0; done < *n; done += chunk {
			size := min(chunk, *n-done)
			if _, err := db.Exec(ctx, preloadSQL, waitSub, size); err != nil {
				return result{}, fmt.Errorf("preload waiting rows: %w", err)
			}
			e.Logf("waiting rows: %d/%d", done+size, *n)
		}
		// As autovacuum would have by the time such a backlog exists.
		if _, err := db.Exec(ctx, "VACUUM ANALYZE postbox.inbox, postbox.parked"); err != nil {
			return result{}, fmt.Errorf("vacuum: %w", err)
		}
		if err := preload(ctx, e, db, queue, true, 0, *fresh, 0); err != nil {
			return result{}, err
		}
		elapsed, err := consumeAll(ctx, e, db, drainSetup{
			subscribers: []string{queue}, consumers: 1, want: int64(*fresh), timeout: *timeout})
		if err != nil {
			return result{}, err
		}
		var left int64
		if err := db.QueryRow(ctx, sqlCountPending, waitSub).Scan(&left); err != nil {
			return result{}, fmt.Errorf("count waiting rows: %w", err)
		}
		if left != int64(*n) {
			return result{}, fmt.Errorf("waiting rows: %d pending after the run, want %d", left, *n)
		}
		return result{Msgs: *fresh, Seconds: elapsed.Seconds()}, nil
	}
}
