package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/benchkit"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
)

// The idle and trickle workloads measure what postbox costs when there is
// little or nothing to do: statements (counted on the client, by a pgx
// tracer on the pool postbox uses), transactions (the server's
// pg_stat_database, which a backend updates within about ten seconds), WAL
// bytes (pg_current_wal_lsn: cluster-wide, so run them on a quiet server),
// and CPU (this process's, and the whole machine's from /proc/stat).

// statementCounter counts the statements sent through a pool.
type statementCounter struct{ n atomic.Int64 }

func (s *statementCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	s.n.Add(1)
	return ctx
}
func (s *statementCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}
func (s *statementCounter) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}
func (s *statementCounter) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {
	s.n.Add(1)
}
func (s *statementCounter) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// meter is a reading of the counters the quiet workloads report.
type meter struct {
	at         time.Time
	statements int64
	xacts      int64
	walLSN     string
	cpu        time.Duration // this process
	machine    int64         // busy clock ticks of the whole machine
}

func readMeter(ctx context.Context, db *pgxpool.Pool, tr *statementCounter) (meter, error) {
	m := meter{at: time.Now(), statements: tr.n.Load()}
	if err := db.QueryRow(ctx, `SELECT xact_commit + xact_rollback, pg_current_wal_lsn()::text
		FROM pg_stat_database WHERE datname = current_database()`).Scan(&m.xacts, &m.walLSN); err != nil {
		return m, err
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		m.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	m.machine = machineBusyTicks()
	return m, nil
}

// machineBusyTicks is the machine's non-idle CPU time from /proc/stat, in
// clock ticks (USER_HZ, 100 a second on Linux); 0 where unavailable.
func machineBusyTicks() int64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0
	}
	var busy int64
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i != 3 && i != 4 { // idle and iowait
			busy += n
		}
	}
	return busy
}

// delta is what happened between two readings.
type delta struct {
	seconds              float64
	statements, xacts    int64
	walBytes             int64
	cpu                  time.Duration
	machineCPUPercentage float64
}

func (e *env) diff(ctx context.Context, db *pgxpool.Pool, a, b meter) (delta, error) {
	d := delta{seconds: b.at.Sub(a.at).Seconds(), statements: b.statements - a.statements,
		xacts: b.xacts - a.xacts, cpu: b.cpu - a.cpu}
	if err := db.QueryRow(ctx, `SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::bigint`, b.walLSN, a.walLSN).Scan(&d.walBytes); err != nil {
		return d, err
	}
	if d.seconds > 0 {
		d.machineCPUPercentage = float64(b.machine-a.machine) / 100 / d.seconds * 100
	}
	return d, nil
}

func idleFlags(fs *flag.FlagSet) func(context.Context, *env) (result, error) {
	subscribers := fs.Int("subscribers", 1, "queues, each with its consumers")
	consumers := fs.Int("consumers", 3, "inbox.Consumer instances per queue (as many processes' worth), default Config each")
	duration := fs.Duration("duration", 30*time.Second, "how long to measure, after a warm-up of 12s (the server updates its statistics within 10s)")
	return func(ctx context.Context, e *env) (result, error) {
		if *subscribers < 1 || *consumers < 1 || *duration <= 0 {
			return result{}, errors.New("--subscribers, --consumers and --duration must be positive")
		}
		var tr statementCounter
		db, err := e.TracedPool(ctx, 2+*subscribers**consumers*connsPerConsumer, &tr)
		if err != nil {
			return result{}, err
		}
		if err := e.reset(ctx, db); err != nil {
			return result{}, err
		}
		r, err := relay.New(db, relay.Config{})
		if err != nil {
			return result{}, err
		}
		var cs []*inbox.Consumer
		for s := range *subscribers {
			q := fmt.Sprintf("bench-idle-%02d", s)
			if err := dispatcher.DeclareQueue(ctx, db, q, dispatcher.Options{}); err != nil {
				return result{}, err
			}
			for range *consumers {
				c, err := inbox.NewConsumer(db, inbox.Config{Subscriber: q, Handler: effectHandler})
				if err != nil {
					return result{}, err
				}
				cs = append(cs, c)
			}
		}
		runCtx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Go(func() { _ = r.Run(runCtx) })
		for _, c := range cs {
			wg.Go(func() { _ = c.Run(runCtx) })
		}
		defer func() { stop(); wg.Wait() }()
		e.Logf("warming up for 12s")
		if !sleepCtx(ctx, 12*time.Second) {
			return result{}, ctx.Err()
		}
		before, err := readMeter(ctx, db, &tr)
		if err != nil {
			return result{}, err
		}
		if !sleepCtx(ctx, *duration) {
			return result{}, ctx.Err()
		}
		after, err := readMeter(ctx, db, &tr)
		if err != nil {
			return result{}, err
		}
		d, err := e.diff(ctx, db, before, after)
		if err != nil {
			return result{}, err
		}
		perConsumer := float64(d.statements) / d.seconds / float64(len(cs)+1)
		return result{Msgs: 0, Seconds: d.seconds, Extra: []string{
			fmt.Sprintf("statements_per_s=%.2f", float64(d.statements)/d.seconds),
			fmt.Sprintf("statements_per_s_per_process=%.2f", perConsumer),
			fmt.Sprintf("tx_per_s=%.2f", float64(d.xacts)/d.seconds),
			fmt.Sprintf("wal_bytes_per_s=%.1f", float64(d.walBytes)/d.seconds),
			fmt.Sprintf("client_cpu_pct=%.2f", d.cpu.Seconds()/d.seconds*100),
			fmt.Sprintf("machine_cpu_pct=%.1f", d.machineCPUPercentage),
		}}, nil
	}
}

func trickleFlags(fs *flag.FlagSet) func(context.Context, *env) (result, error) {
	rate := fs.Int("rate", 200, "messages per second, each published in its own transaction")
	consumers := fs.Int("consumers", 3, "inbox.Consumer instances of the queue (as many processes' worth), default Config each")
	duration := fs.Duration("duration", 20*time.Second, "how long to publish and measure, after a warm-up of 12s")
	return func(ctx context.Context, e *env) (result, error) {
		if *rate < 1 || *consumers < 1 || *duration <= 0 {
			return result{}, errors.New("--rate, --consumers and --duration must be positive")
		}
		var tr statementCounter
		db, err := e.TracedPool(ctx, 2+*consumers*connsPerConsumer, &tr)
		if err != nil {
			return result{}, err
		}
		producers, err := e.Pool(ctx, 8)
		if err != nil {
			return result{}, err
		}
		if err := e.reset(ctx, db); err != nil {
			return result{}, err
		}
		const queue = "bench-trickle"
		if err := dispatcher.DeclareQueue(ctx, db, queue, dispatcher.Options{}); err != nil {
			return result{}, err
		}
		r, err := relay.New(db, relay.Config{})
		if err != nil {
			return result{}, err
		}
		var cs []*inbox.Consumer
		for range *consumers {
			c, err := inbox.NewConsumer(db, inbox.Config{Subscriber: queue, Handler: effectHandler})
			if err != nil {
				return result{}, err
			}
			cs = append(cs, c)
		}
		handled := func() int64 {
			var n int64
			for _, c := range cs {
				n += c.Stats().Handled
			}
			return n
		}
		runCtx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Go(func() { _ = r.Run(runCtx) })
		for _, c := range cs {
			wg.Go(func() { _ = c.Run(runCtx) })
		}
		var published atomic.Int64
		var pubErr atomic.Value
		wg.Go(func() { publishAt(runCtx, producers, queue, *rate, &published, &pubErr) })
		defer func() { stop(); wg.Wait() }()
		if !sleepCtx(ctx, 12*time.Second) {
			return result{}, ctx.Err()
		}
		before, err := readMeter(ctx, db, &tr)
		if err != nil {
			return result{}, err
		}
		h0 := handled()
		if !sleepCtx(ctx, *duration) {
			return result{}, ctx.Err()
		}
		after, err := readMeter(ctx, db, &tr)
		if err != nil {
			return result{}, err
		}
		n := handled() - h0
		if v := pubErr.Load(); v != nil {
			return result{}, fmt.Errorf("publish: %w", v.(error))
		}
		if n == 0 {
			return result{}, errors.New("nothing was handled")
		}
		d, err := e.diff(ctx, db, before, after)
		if err != nil {
			return result{}, err
		}
		return result{Msgs: int(n), Seconds: d.seconds, Extra: []string{
			fmt.Sprintf("statements_per_msg=%.2f", float64(d.statements)/float64(n)),
			fmt.Sprintf("client_cpu_us_per_msg=%.1f", float64(d.cpu.Microseconds())/float64(n)),
			fmt.Sprintf("machine_cpu_pct=%.1f", d.machineCPUPercentage),
		}}, nil
	}
}

// publishAt sends one message per transaction at rate a second until ctx
// ends, from a few goroutines (the schedule does not wait for them).
func publishAt(ctx context.Context, db *pgxpool.Pool, queue string, rate int, published *atomic.Int64, failed *atomic.Value) {
	work := make(chan int, 1024)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for i := range work {
				msg, _ := benchkit.NewMessage(i, queue, 0)
				err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error { return outbox.Send(ctx, tx, msg) })
				if err != nil && ctx.Err() == nil {
					failed.Store(err)
					return
				}
				published.Add(1)
			}
		})
	}
	defer func() { close(work); wg.Wait() }()
	start := time.Now()
	for i := 0; ; i++ {
		at := start.Add(time.Duration(i) * time.Second / time.Duration(rate))
		if !sleepCtx(ctx, time.Until(at)) {
			return
		}
		select {
		case work <- i:
		default: // the publishers are behind: drop this one rather than wait
		}
	}
}

// sleepCtx waits d or until ctx ends; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
