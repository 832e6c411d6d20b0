package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/schema"
)

// common holds the flags every workload takes.
type common struct {
	databaseURL string
	cpuprofile  string
	progress    time.Duration
	force       bool
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.databaseURL, "database-url", os.Getenv("DATABASE_URL"), "PostgreSQL connection string (default $DATABASE_URL)")
	fs.StringVar(&c.cpuprofile, "cpuprofile", "", "write a Go CPU profile of the whole run to this file")
	fs.DurationVar(&c.progress, "progress", 2*time.Second, "how often to report progress on stderr (0: never)")
	fs.BoolVar(&c.force, "force", false, "run even if the database name contains neither \"bench\" nor \"test\" (its postbox tables are truncated)")
}

// env is what a workload runs against.
type env struct {
	url      string
	stderr   io.Writer
	progress time.Duration
	pools    []*pgxpool.Pool
	tracer   *statementCounter // set while tracedPool opens a pool
}

// open checks the database, migrates it and creates the bench tables.
func open(ctx context.Context, c common, stderr io.Writer) (*env, error) {
	if c.databaseURL == "" {
		return nil, errors.New("no database: set DATABASE_URL or pass --database-url (a dedicated database such as postbox_bench)")
	}
	e := &env{url: c.databaseURL, stderr: stderr, progress: c.progress}
	pool, err := e.pool(ctx, 2)
	if err != nil {
		return nil, err
	}
	var name string
	if err := pool.QueryRow(ctx, "SELECT current_database()").Scan(&name); err != nil {
		e.close()
		return nil, fmt.Errorf("connect: %w", err)
	}
	if !c.force && !strings.Contains(name, "bench") && !strings.Contains(name, "test") {
		e.close()
		return nil, fmt.Errorf("database %q: bench truncates the postbox tables, so it runs only on a database whose name contains \"bench\" or \"test\" (e.g. createdb postbox_bench), or with --force", name)
	}
	if err := schema.Migrate(ctx, pool); err != nil {
		e.close()
		return nil, fmt.Errorf("migrate: %w", err)
	}
	if _, err := pool.Exec(ctx, sqlSetup+";"+sqlSetupRaw); err != nil {
		e.close()
		return nil, fmt.Errorf("create bench tables: %w", err)
	}
	return e, nil
}

// pool opens a pool of exactly maxConns connections, all established
// before it is returned so that no timed section pays for connecting.
func (e *env) pool(ctx context.Context, maxConns int) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(e.url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	cfg.MaxConns = int32(maxConns)
	cfg.MinConns = int32(maxConns)
	if e.tracer != nil {
		cfg.ConnConfig.Tracer = e.tracer
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open pool: %w", err)
	}
	conns := make([]*pgxpool.Conn, 0, maxConns)
	for range maxConns {
		c, err := pool.Acquire(ctx)
		if err != nil {
			for _, c := range conns {
				c.Release()
			}
			pool.Close()
			return nil, fmt.Errorf("connect: %w", err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		c.Release()
	}
	e.pools = append(e.pools, pool)
	return pool, nil
}

func (e *env) close() {
	for _, p := range e.pools {
		p.Close()
	}
}

func (e *env) logf(format string, args ...any) {
	if e.progress > 0 {
		fmt.Fprintf(e.stderr, format+"\n", args...)
	}
}

// reset gives every run the same starting point: the postbox schema is
// dropped and migrated again (empty tables with no statistics, as on a fresh
// installation: ANALYZE of an emptied table keeps its old column statistics,
// so plans would otherwise depend on what the previous workload left), the
// bench tables are emptied, and a checkpoint leaves no dirty pages of a
// previous run to flush.
func (e *env) reset(ctx context.Context, db *pgxpool.Pool) error {
	if err := schema.Reset(ctx, db); err != nil {
		return fmt.Errorf("reset: drop postbox schema: %w", err)
	}
	if err := schema.Migrate(ctx, db); err != nil {
		return fmt.Errorf("reset: migrate: %w", err)
	}
	if _, err := db.Exec(ctx, sqlReset); err != nil {
		return fmt.Errorf("reset: %w", err)
	}
	// CHECKPOINT needs superuser or pg_checkpoint; without them runs are
	// a little noisier, not wrong.
	if _, err := db.Exec(ctx, "CHECKPOINT"); err != nil {
		e.logf("checkpoint skipped: %v", err)
	}
	return nil
}

// every calls report every e.progress until the returned stop is called.
func (e *env) every(report func()) (stop func()) {
	if e.progress <= 0 {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(e.progress)
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

// countEffects counts effect rows and distinct (subscriber, message) pairs.
func countEffects(ctx context.Context, db *pgxpool.Pool) (rows, distinct int64, err error) {
	err = db.QueryRow(ctx, sqlCountEffects).Scan(&rows, &distinct)
	return rows, distinct, err
}

// insertEffect is what every bench handler writes through its transaction.
func insertEffect(ctx context.Context, tx pgx.Tx, subscriber, id string) error {
	_, err := tx.Exec(ctx, sqlInsertEffect, subscriber, id)
	return err
}
