// Command orders is postbox's order system, end to end.
//
// An order service writes each order and its messages in one transaction
// (the transactional outbox). A relay moves the committed messages to the
// subscribers of topic order.created (inventory, notifications, analytics
// on order.#, and high-value, whose subscription filters on totalAmount)
// and to the process-order queue, where two competing consumers turn each
// command into a shipment request on the shipments queue. Along the way
// the program injects what goes wrong in production: a poison order that
// exhausts its retries and is replayed once fixed, a malformed command that
// is dead-lettered at once, and producers that send the same message twice.
//
//	go run ./examples/orders
//
// Progress goes to stderr; stdout gets one line counted in the database:
//
//	orders: published=41 handled=63 duplicates=0 lost=0 dead=1 replayed=1
//
// See README.md for what each number means.
package main

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := setUpAndRun(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "orders:", err)
		os.Exit(1)
	}
}

// setUpAndRun finds a server, gives the example a fresh database of its own
// and runs the story on it.
func setUpAndRun(ctx context.Context) error {
	log, _ := newLoggers(os.Stderr)
	server, stopServer, err := example.FindServer(ctx, log)
	if err != nil {
		return err
	}
	defer stopServer()
	databaseURL, err := example.Prepare(ctx, server)
	if err != nil {
		return err
	}
	log.Info("database ready", "database", exampleDatabase)
	return run(ctx, databaseURL, os.Stdout, os.Stderr)
}

//go:embed tables.sql
var tablesSQL string

// run plays the story on a database already migrated to the postbox
// schema, logs progress to stderr and prints the summary to stdout.
func run(ctx context.Context, databaseURL string, stdout, stderr io.Writer) error {
	log, postboxLog := newLoggers(stderr)

	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return fmt.Errorf("parse database URL: %w", err)
	}
	// 7 consumers x 2 workers, the relay, and this goroutine. (Each
	// consumer also holds one connection outside the pool for LISTEN.)
	cfg.MaxConns = 20
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("open pool: %w", err)
	}
	defer pool.Close()

	if _, err := pool.Exec(ctx, tablesSQL); err != nil {
		return fmt.Errorf("create the example's tables: %w", err)
	}
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return declareRouting(ctx, tx) }); err != nil {
		return fmt.Errorf("declare routing: %w", err)
	}

	w, err := startWorkers(ctx, pool, postboxLog)
	if err != nil {
		return err
	}
	storyErr := playStory(ctx, pool, log)
	if err := errors.Join(storyErr, w.stop()); err != nil {
		return err
	}
	w.logStats(log)
	if err := logAnalytics(ctx, pool, log); err != nil {
		return err
	}

	summary, err := readSummary(ctx, pool)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, summary)
	return err
}

// playStory is the order system's day, while the relay and the consumers
// run. Each wait polls the database until every delivery is handled or
// dead.
func playStory(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) error {
	// The order service takes orders: one transaction each.
	orders, err := placeOrders(ctx, pool, sampleOrders())
	if err != nil {
		return err
	}
	log.Info("orders placed", "orders", len(orders), "poison_sku", poisonSKU)

	// The invalid-message channel: a payload no retry can fix.
	if err := sendLegacyCommand(ctx, pool); err != nil {
		return err
	}
	log.Info("legacy checkout sent a malformed process-order command")

	// Producers retrying after a timeout send the same message ID again,
	// here while the originals are still on their way.
	n, err := republish(ctx, pool, orders[:3])
	if err != nil {
		return err
	}
	log.Info("re-published messages with their original IDs", "messages", n)

	if err := waitSettled(ctx, pool); err != nil {
		return err
	}
	if err := logDeadLetters(ctx, pool, log); err != nil {
		return err
	}

	// The same duplicates again, long after the originals were handled:
	// the dedup window still remembers them.
	if n, err = republish(ctx, pool, orders[:3]); err != nil {
		return err
	}
	log.Info("re-published the same messages after they were handled", "messages", n)
	if err := waitSettled(ctx, pool); err != nil {
		return err
	}

	// The catalogue sync catches up; the poison order can now succeed.
	if _, err := pool.Exec(ctx, `INSERT INTO products (sku, name) VALUES ($1, 'Docking station')`, poisonSKU); err != nil {
		return fmt.Errorf("add product: %w", err)
	}
	replayed, err := replayDeadLetters(ctx, pool, "inventory")
	if err != nil {
		return err
	}
	log.Info("catalogue fixed; replayed inventory's dead letters", "sku", poisonSKU, "replayed", replayed)
	if err := waitSettled(ctx, pool); err != nil {
		return err
	}
	return logDeadLetters(ctx, pool, log)
}

// replayDeadLetters makes a subscriber's dead letters pending again, the way
// an operator does from psql.
func replayDeadLetters(ctx context.Context, pool *pgxpool.Pool, subscriber string) (int, error) {
	var n int
	if err := pool.QueryRow(ctx, `SELECT postbox.replay_dead_letters($1)`, subscriber).Scan(&n); err != nil {
		return 0, fmt.Errorf("replay dead letters of %s: %w", subscriber, err)
	}
	return n, nil
}

// logDeadLetters logs every dead letter in postbox.dead_letters.
func logDeadLetters(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) error {
	rows, err := pool.Query(ctx, `
		SELECT subscriber, coalesce(key, ''), attempts, last_error
		FROM postbox.dead_letters
		ORDER BY subscriber, dead_at`)
	if err != nil {
		return fmt.Errorf("list dead letters: %w", err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var subscriber, key, lastError string
		var attempts int
		if err := rows.Scan(&subscriber, &key, &attempts, &lastError); err != nil {
			return fmt.Errorf("list dead letters: %w", err)
		}
		log.Info("dead letter", "subscriber", subscriber, "key", key, "attempts", attempts, "error", lastError)
		n++
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("list dead letters: %w", err)
	}
	log.Info("deliveries settled", "dead_letters", n)
	return nil
}

// logAnalytics logs what the analytics subscriber counted per topic.
func logAnalytics(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) error {
	rows, err := pool.Query(ctx, `SELECT topic, count(*) FROM analytics_events GROUP BY topic ORDER BY topic`)
	if err != nil {
		return fmt.Errorf("analytics: %w", err)
	}
	counts, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (any, error) {
		var topic string
		var n int64
		err := r.Scan(&topic, &n)
		return slog.Int64(topic, n), err
	})
	if err != nil {
		return fmt.Errorf("analytics: %w", err)
	}
	log.Info("analytics counted", counts...)
	return nil
}

// newLoggers returns the example's logger and a quieter one for postbox
// itself (warnings and errors, such as failed handler attempts). Both write
// text lines without timestamps to w, one line at a time.
func newLoggers(w io.Writer) (app, lib *slog.Logger) {
	w = &lockedWriter{w: w}
	noTime := func(groups []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey && len(groups) == 0 {
			return slog.Attr{}
		}
		return a
	}
	app = slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo, ReplaceAttr: noTime}))
	lib = slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn, ReplaceAttr: noTime}))
	return app, lib
}

// lockedWriter serializes writes from the two loggers.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
