package benchkit

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/internal/redact"
)

// Env is what a workload runs against: the database, where progress goes,
// and the pools it opened (Program.Run closes them).
type Env struct {
	URL      string
	Stderr   io.Writer
	Progress time.Duration // how often to report progress; 0: never, and Logf is silent
	pools    []*pgxpool.Pool
}

// open checks that a database is named and that its name marks it as one
// to benchmark on, and returns the Env with a pool of two connections to it.
func open(ctx context.Context, c common, stderr io.Writer, truncates string) (*Env, *pgxpool.Pool, error) {
	url := c.url()
	if url == "" {
		return nil, nil, usageErrorf("no database: set DATABASE_URL or pass --database-url (a dedicated database such as postbox_bench)")
	}
	if err := redact.CheckURL(url); err != nil {
		return nil, nil, usageErrorf("database url: %w", err)
	}
	e := &Env{URL: url, Stderr: stderr, Progress: c.progress}
	pool, err := e.Pool(ctx, 2)
	if err != nil {
		return nil, nil, err
	}
	var name string
	if err := pool.QueryRow(ctx, "SELECT current_database()").Scan(&name); err != nil {
		e.Close()
		return nil, nil, fmt.Errorf("connect: %w", err)
	}
	if !c.force && !strings.Contains(name, "bench") && !strings.Contains(name, "test") {
		e.Close()
		return nil, nil, fmt.Errorf("database %q: the bench truncates %s, so it runs only on a database whose name contains \"bench\" or \"test\" (e.g. createdb postbox_bench), or with --force", name, truncates)
	}
	return e, pool, nil
}

// Pool opens a pool of exactly maxConns connections, all established
// before it is returned so that no timed section pays for connecting.
func (e *Env) Pool(ctx context.Context, maxConns int) (*pgxpool.Pool, error) {
	return e.TracedPool(ctx, maxConns, nil)
}

// TracedPool is Pool with tracer (if not nil) on every connection.
func (e *Env) TracedPool(ctx context.Context, maxConns int, tracer pgx.QueryTracer) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(e.URL)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	cfg.MaxConns = int32(maxConns)
	cfg.MinConns = int32(maxConns)
	if tracer != nil {
		cfg.ConnConfig.Tracer = tracer
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open pool: %w", err)
	}
	// Released before the pool may be closed: Close waits for them.
	conns := make([]*pgxpool.Conn, 0, maxConns)
	release := func() {
		for _, c := range conns {
			c.Release()
		}
	}
	for range maxConns {
		c, err := pool.Acquire(ctx)
		if err != nil {
			release()
			pool.Close()
			return nil, fmt.Errorf("connect: %w", err)
		}
		conns = append(conns, c)
	}
	release()
	e.pools = append(e.pools, pool)
	return pool, nil
}

// Close closes the pools.
func (e *Env) Close() {
	for _, p := range e.pools {
		p.Close()
	}
}

// Logf prints a line of progress on stderr, unless --progress is 0.
func (e *Env) Logf(format string, args ...any) {
	if e.Progress > 0 {
		fmt.Fprintf(e.Stderr, format+"\n", args...)
	}
}

// Every calls report every --progress until the returned stop is called.
func (e *Env) Every(report func()) (stop func()) {
	if e.Progress <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(e.Progress)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				report()
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// ResetTables runs truncate (a TRUNCATE of the program's tables) and a
// CHECKPOINT, so that a run leaves no dirty pages for the next to flush.
func (e *Env) ResetTables(ctx context.Context, db *pgxpool.Pool, truncate string) error {
	if _, err := db.Exec(ctx, truncate); err != nil {
		return fmt.Errorf("reset: %w", err)
	}
	// CHECKPOINT needs superuser or pg_checkpoint; without them runs are
	// a little noisier, not wrong.
	if _, err := db.Exec(ctx, "CHECKPOINT"); err != nil {
		e.Logf("checkpoint skipped: %v", err)
	}
	return nil
}

// LogLatency prints the distribution of lats (p50, p90, p99, p99.9, max);
// lats is left as it was.
func (e *Env) LogLatency(lats []time.Duration) {
	if len(lats) == 0 {
		return
	}
	s := slices.Clone(lats)
	slices.Sort(s)
	e.Logf("latency: p50 %.2fms p90 %.2fms p99 %.2fms p99.9 %.2fms max %.2fms", Millis(Percentile(s, 50)),
		Millis(Percentile(s, 90)), Millis(Percentile(s, 99)), Millis(Percentile(s, 99.9)), Millis(s[len(s)-1]))
}
