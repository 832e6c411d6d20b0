package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/benchkit"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

// soak is a steady load for a long time, to show drift and bloat: every
// interval (a minute by default) it prints one SOAK line on stderr with
// what that interval did and what the tables hold at its end,
//
//	SOAK t=3m0s published=30000 handled=30000 rate=500.0 backlog=2 p50_ms=3.10 p99_ms=9.80 max_ms=31.00
//	     outbox_kb=344 inbox_kb=9120 parked_kb=16 dead_kb=16 processed_kb=5400 other_kb=96 total_kb=14992
//	     dead_tuples=1200 wal_kb=20480
//
// (one line), and the RESULT line at the end compares the first interval
// with the last and the worst: p99_first_ms, p99_last_ms, p99_max_ms,
// size_first_kb, size_last_kb, size_max_kb, wal_bytes_per_msg. A p99 or a
// size that keeps growing from line to line is the finding; a healthy run
// is flat after the first intervals (the dedup window filling up, the
// inbox slots' ring turning once).
//
// Latency is from the message's CreatedAt (the publishing transaction's
// now() on the server) to the start of its handler, so memory stays
// bounded by one interval's messages however long the soak runs. wal_kb is
// the cluster's WAL, other activity included: soak on a quiet server.
func soakFlags(fs *flag.FlagSet) func(context.Context, *env) (result, error) {
	duration := fs.Duration("duration", 10*time.Minute, "how long to publish")
	rate := fs.Int("rate", 500, "messages per second, each sent in its own transaction (open loop)")
	publishers := fs.Int("publishers", 8, "connections that publish")
	consumers := fs.Int("consumers", 1, "inbox.Consumer instances, each with the default Config")
	keys := fs.Int("keys", 100, "distinct message keys (0: messages have no key)")
	every := fs.Duration("every", time.Minute, "how often to print a SOAK line")
	dedupWindow := fs.Duration("dedup-window", 2*time.Minute, "the queue's dedup window; a janitor sweeps every 10s, so the processed IDs reach a steady size within the run")
	timeout := fs.Duration("timeout", 2*time.Minute, "after publishing, how long to wait for the backlog to drain")
	return func(ctx context.Context, e *env) (result, error) {
		if *duration <= 0 || *rate < 1 || *publishers < 1 || *consumers < 1 || *every <= 0 {
			return result{}, errors.New("--duration, --rate, --publishers, --consumers and --every must be positive")
		}
		db, err := e.Pool(ctx, *publishers+*consumers*connsPerConsumer+4)
		if err != nil {
			return result{}, err
		}
		if err := e.reset(ctx, db); err != nil {
			return result{}, err
		}
		const queue = "bench-soak"
		if err := dispatcher.DeclareQueue(ctx, db, queue, dispatcher.Options{DedupWindow: *dedupWindow}); err != nil {
			return result{}, err
		}
		s := &soak{e: e, db: db}
		if err := s.run(ctx, queue, *duration, *rate, *publishers, *consumers, *keys, *every, *timeout); err != nil {
			return result{}, err
		}
		return s.result(), nil
	}
}

// soak is one soak run's state.
type soak struct {
	e  *env
	db *pgxpool.Pool

	published, handled atomic.Int64
	mu                 sync.Mutex
	lats               []time.Duration // this interval's
	rows               []soakLine
	elapsed            time.Duration
}

// soakLine is one interval.
type soakLine struct {
	at                  time.Duration
	published, handled  int64
	p50, p99, max       time.Duration
	sizes               soakSizes
	deadTuples, walKB   int64
	walBytes            int64
	publishedCumulative int64
	drain               bool // the wait for the backlog after publishing ended
}

// soakSizes are the postbox tables' sizes with their indexes, in KiB.
type soakSizes struct {
	outbox, inbox, parked, dead, processed, other int64
}

func (z soakSizes) total() int64 {
	return z.outbox + z.inbox + z.parked + z.dead + z.processed + z.other
}

const sqlSoakSizes = `SELECT
    coalesce(sum(s) FILTER (WHERE relname ~ '^outbox_[0-7]$'), 0)::bigint,
    coalesce(sum(s) FILTER (WHERE relname ~ '^inbox_[0-7]$'), 0)::bigint,
    coalesce(sum(s) FILTER (WHERE relname = 'parked'), 0)::bigint,
    coalesce(sum(s) FILTER (WHERE relname = 'dead_letters'), 0)::bigint,
    coalesce(sum(s) FILTER (WHERE relname = 'processed'), 0)::bigint,
    coalesce(sum(s) FILTER (WHERE relname !~ '^(outbox|inbox)_[0-7]$' AND relname NOT IN ('parked', 'dead_letters', 'processed')), 0)::bigint,
    (SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables WHERE schemaname = 'postbox')::bigint,
    (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint
FROM (SELECT c.relname, pg_total_relation_size(c.oid) / 1024 AS s
      FROM pg_class c WHERE c.relnamespace = 'postbox'::regnamespace AND c.relkind = 'r') t`

func (s *soak) run(ctx context.Context, queue string, duration time.Duration, rate, publishers, consumers, keys int,
	every, timeout time.Duration) error {
	handler := inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
		lat := time.Since(d.CreatedAt)
		if err := insertEffect(ctx, tx, d.Subscriber, d.ID.String()); err != nil {
			return err
		}
		s.mu.Lock()
		s.lats = append(s.lats, lat)
		s.mu.Unlock()
		return nil
	})
	r, err := relay.New(s.db, relay.Config{})
	if err != nil {
		return err
	}
	var cs []*inbox.Consumer
	for range consumers {
		c, err := inbox.NewConsumer(s.db, inbox.Config{Subscriber: queue, Handler: handler,
			OnBatch: func(b inbox.BatchInfo) { s.handled.Add(int64(len(b.Handled))) }})
		if err != nil {
			return err
		}
		cs = append(cs, c)
	}
	j, err := inbox.NewJanitor(s.db, inbox.JanitorConfig{Interval: 10 * time.Second})
	if err != nil {
		return err
	}
	runCtx, stopRun := context.WithCancel(ctx)
	var running sync.WaitGroup
	running.Go(func() { _ = r.Run(runCtx) })
	running.Go(func() { _ = j.Run(runCtx) })
	for _, c := range cs {
		running.Go(func() { _ = c.Run(runCtx) })
	}
	defer func() { stopRun(); running.Wait() }()

	start := time.Now()
	prev, err := s.sample(ctx, 0)
	if err != nil {
		return err
	}
	pubCtx, stopPub := context.WithTimeout(ctx, duration)
	defer stopPub()
	var pubErr error
	var publishing sync.WaitGroup
	publishing.Go(func() { pubErr = s.publish(pubCtx, queue, rate, publishers, keys) })

	tick := time.NewTicker(every)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-pubCtx.Done():
			done = true
			if time.Since(start)-prev.at < every/2 {
				continue // a stub of an interval: the drain's line takes it
			}
		case <-tick.C:
		}
		line, err := s.sample(ctx, time.Since(start))
		if err != nil {
			return err
		}
		s.report(line, prev)
		prev = line
	}
	publishing.Wait()
	s.elapsed = time.Since(start)
	if pubErr != nil && !errors.Is(pubErr, context.DeadlineExceeded) {
		return fmt.Errorf("publish: %w", pubErr)
	}
	want := s.published.Load()
	if _, err := benchkit.WaitFor(ctx, timeout, func() bool { return s.handled.Load() >= want }); err != nil {
		return fmt.Errorf("drain after the soak: %w: handled %d of %d", err, s.handled.Load(), want)
	}
	line, err := s.sample(ctx, time.Since(start))
	if err != nil {
		return err
	}
	line.drain = true
	s.report(line, prev)
	return tables.CheckEffects(ctx, s.db, want)
}

// publish sends rate messages a second until ctx ends, each in its own
// transaction, from publishers connections. The schedule does not wait for
// a slow publisher unless a whole second of sends is queued.
func (s *soak) publish(ctx context.Context, queue string, rate, publishers, keys int) error {
	jobs := make(chan int, rate)
	errs := make([]error, publishers)
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Go(func() {
			for i := range jobs {
				msg, _ := benchkit.NewMessage(i, queue, keys)
				if err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error { return outbox.Send(ctx, tx, msg) }); err != nil {
					if ctx.Err() == nil {
						errs[p] = err
					}
					return
				}
				s.published.Add(1)
			}
		})
	}
	start := time.Now()
	interval := time.Second / time.Duration(rate)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for i := 0; ctx.Err() == nil; i++ {
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
			case <-timer.C:
			}
		}
		select {
		case jobs <- i:
		case <-ctx.Done():
		}
	}
	close(jobs)
	wg.Wait()
	return errors.Join(errs...)
}

// sample takes the interval's latencies and the tables' state now.
func (s *soak) sample(ctx context.Context, at time.Duration) (soakLine, error) {
	l := soakLine{at: at, publishedCumulative: s.published.Load(), handled: s.handled.Load()}
	z := &l.sizes
	if err := s.db.QueryRow(ctx, sqlSoakSizes).Scan(&z.outbox, &z.inbox, &z.parked, &z.dead, &z.processed, &z.other,
		&l.deadTuples, &l.walBytes); err != nil {
		return l, fmt.Errorf("table sizes: %w", err)
	}
	s.mu.Lock()
	lats := s.lats
	s.lats = nil
	s.mu.Unlock()
	if len(lats) > 0 {
		slices.Sort(lats)
		l.p50, l.p99, l.max = benchkit.Percentile(lats, 50), benchkit.Percentile(lats, 99), lats[len(lats)-1]
	}
	return l, nil
}

// report prints the SOAK line of the interval from prev to l.
func (s *soak) report(l, prev soakLine) {
	l.published = l.publishedCumulative - prev.publishedCumulative
	l.walKB = (l.walBytes - prev.walBytes) / 1024
	secs := (l.at - prev.at).Seconds()
	if secs <= 0 {
		return
	}
	handled := l.handled - prev.handled
	z := l.sizes
	at := l.at.Round(time.Second).String()
	if l.drain {
		at += "(drain)"
	}
	fmt.Fprintf(s.e.Stderr, "SOAK t=%s published=%d handled=%d rate=%.1f backlog=%d p50_ms=%.2f p99_ms=%.2f max_ms=%.2f "+
		"outbox_kb=%d inbox_kb=%d parked_kb=%d dead_kb=%d processed_kb=%d other_kb=%d total_kb=%d dead_tuples=%d wal_kb=%d\n",
		at, l.published, handled, float64(handled)/secs, l.publishedCumulative-l.handled,
		benchkit.Millis(l.p50), benchkit.Millis(l.p99), benchkit.Millis(l.max), z.outbox, z.inbox, z.parked, z.dead, z.processed, z.other, z.total(),
		l.deadTuples, l.walKB)
	s.rows = append(s.rows, l)
}

// result compares the first interval with the last and the worst.
func (s *soak) result() result {
	res := result{Msgs: int(s.published.Load()), Seconds: s.elapsed.Seconds()}
	if len(s.rows) == 0 {
		return res
	}
	// The drain's line is left out of first and last: it is no steady state.
	steady := s.rows
	if len(steady) > 1 && steady[len(steady)-1].drain {
		steady = steady[:len(steady)-1]
	}
	first, last := steady[0], steady[len(steady)-1]
	res.P50, res.P99, res.HasLatency = last.p50, last.p99, true
	var p99max time.Duration
	var sizeMax, wal int64
	for _, l := range s.rows {
		p99max = max(p99max, l.p99)
		sizeMax = max(sizeMax, l.sizes.total())
		wal += l.walKB * 1024
	}
	extra := []string{
		fmt.Sprintf("intervals=%d", len(s.rows)),
		fmt.Sprintf("p99_first_ms=%.2f p99_last_ms=%.2f p99_max_ms=%.2f", benchkit.Millis(first.p99), benchkit.Millis(last.p99), benchkit.Millis(p99max)),
		fmt.Sprintf("size_first_kb=%d size_last_kb=%d size_max_kb=%d", first.sizes.total(), last.sizes.total(), sizeMax),
	}
	if res.Msgs > 0 {
		extra = append(extra, fmt.Sprintf("wal_bytes_per_msg=%d", wal/int64(res.Msgs)))
	}
	res.Extra = []string{strings.Join(extra, " ")}
	return res
}
