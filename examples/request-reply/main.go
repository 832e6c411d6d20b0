// Command request-reply is request/reply on postbox: checkout asks the
// inventory service for stock levels and waits for the answers.
//
// Two checkout processes (two reqreply.Requesters, each with its own pool
// and reply queue, as two processes would have) send stock queries to the
// stock-queries queue; the inventory service answers each from its handler
// with reqreply.Reply, in the transaction that records the query. Along
// the way: a query sent while the inventory service is down times out, and
// its reply, when it comes, goes to checkout's Handler as a late reply
// instead of to another request; reservations send their query
// asynchronously from their own transaction (Requester.Send) and get the
// reply in the Handler; and once both checkouts have stopped, a restarted
// checkout sweeps their reply queues away.
//
//	go run ./examples/request-reply
//
// Progress goes to stderr; stdout gets one line counted in the database:
//
//	request-reply: requests=16 answered=12 late=1 async=3 replies=16 duplicates=0 dead=0 reply_queues=0
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
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/relay"
	"github.com/postbox-dev/postbox/reqreply"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := setUpAndRun(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "request-reply:", err)
		os.Exit(1)
	}
}

// setUpAndRun finds a server, gives the example a fresh database of its own
// and runs the story on it.
func setUpAndRun(ctx context.Context) error {
	log := newLogger(&lockedWriter{w: os.Stderr}, slog.LevelInfo)
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

const (
	stockQueries = "stock-queries" // the inventory service's queue
	checkout     = "checkout"      // the requesters' name: reply queues are checkout.reply.*
)

type stockQuery struct {
	SKU string `json:"sku"`
}

type stockLevel struct {
	SKU    string `json:"sku"`
	OnHand int    `json:"onHand"`
}

// run plays the story on a database already migrated to the postbox
// schema, logs progress to stderr and prints the summary to stdout.
func run(ctx context.Context, databaseURL string, stdout, stderr io.Writer) error {
	out := &lockedWriter{w: stderr}
	log := newLogger(out, slog.LevelInfo) // the story
	lib := newLogger(out, slog.LevelWarn) // postbox itself: failures only
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()

	pool, err := openPool(ctx, databaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, tablesSQL); err != nil {
		return fmt.Errorf("create the example's tables: %w", err)
	}
	if err := dispatcher.DeclareQueue(ctx, pool, stockQueries, dispatcher.Options{}); err != nil {
		return err
	}

	var w workers
	defer w.stop()
	r, err := relay.New(pool, relay.Config{PollInterval: 5 * time.Millisecond, Logger: lib})
	if err != nil {
		return err
	}
	w.start(ctx, "relay", r.Run)

	// Two checkout processes, each with its own pool and reply queue.
	var requesters []*reqreply.Requester
	var stopRequesters []func()
	for i := range 2 {
		p, err := openPool(ctx, databaseURL)
		if err != nil {
			return err
		}
		defer p.Close()
		rq, err := reqreply.NewRequester(p, reqreply.Config{Name: checkout, Handler: inbox.HandlerFunc(handleReply),
			Timeout: 10 * time.Second, PollInterval: 5 * time.Millisecond, Logger: lib})
		if err != nil {
			return err
		}
		requesters = append(requesters, rq)
		stopRequesters = append(stopRequesters, w.start(ctx, fmt.Sprintf("checkout-%d", i+1), rq.Run))
	}

	for _, rq := range requesters {
		select {
		case <-rq.Ready():
		case <-time.After(30 * time.Second):
			return fmt.Errorf("checkout did not start: %v", w.err())
		}
	}

	// 1. The inventory service is being deployed: nobody answers, and a
	// query with a short timeout gives up. (The timeout also bounds the
	// query's own commit, so it is not too short for a loaded machine.)
	qctx, qcancel := context.WithTimeout(ctx, time.Second)
	_, err = ask(qctx, pool, requesters[0], "checkout-1", "SKU-01")
	qcancel()
	if !errors.Is(err, reqreply.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("the query to a service that is down: %v, want a timeout", err)
	}
	log.Info("stock query timed out while the inventory service was down", "sku", "SKU-01")

	// 2. It is up: the query it finds waiting is answered too, and the
	// reply goes to checkout's Handler as a late one.
	inventory, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: stockQueries, Handler: inbox.HandlerFunc(answer),
		PollInterval: 5 * time.Millisecond, Logger: lib})
	if err != nil {
		return err
	}
	w.start(ctx, "inventory", inventory.Run)

	// 3. Both checkouts ask for six SKUs each, all at once.
	var wg sync.WaitGroup
	errs := make(chan error, 12)
	for i, rq := range requesters {
		for j := range 6 {
			sku := fmt.Sprintf("SKU-%02d", i*6+j+1)
			wg.Go(func() {
				if _, err := ask(ctx, pool, rq, fmt.Sprintf("checkout-%d", i+1), sku); err != nil {
					errs <- fmt.Errorf("ask for %s: %w", sku, err)
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	if err := errors.Join(collect(errs)...); err != nil {
		return err
	}
	log.Info("both checkouts got their 12 answers")

	// 4. Reservations ask asynchronously, in their own transaction.
	for i, sku := range []string{"SKU-02", "SKU-05", "SKU-11"} {
		if err := reserve(ctx, pool, requesters[1], sku, i+1); err != nil {
			return err
		}
	}
	log.Info("reservations sent their stock queries", "reservations", 3)
	if err := waitSettled(ctx, pool); err != nil {
		return err
	}

	// 5. Both checkouts stop; a restarted one sweeps their reply queues
	// away (with a short expiry, for the demo; the default is 10 minutes).
	for _, stop := range stopRequesters {
		stop()
	}
	restarted, err := reqreply.NewRequester(pool, reqreply.Config{Name: checkout, Handler: inbox.HandlerFunc(handleReply),
		Expiry: time.Millisecond, Logger: lib})
	if err != nil {
		return err
	}
	dropped, err := sweepAll(ctx, pool, restarted)
	if err != nil {
		return err
	}
	log.Info("a restarted checkout swept the reply queues of the stopped ones", "dropped", dropped)

	w.stop()
	if err := w.err(); err != nil {
		return err
	}
	summary, err := readSummary(ctx, pool)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, summary)
	return err
}

// ask is a checkout's stock query: Request, and record the answer.
func ask(ctx context.Context, pool *pgxpool.Pool, rq *reqreply.Requester, requester, sku string) (stockLevel, error) {
	payload, err := postbox.JSON(stockQuery{SKU: sku})
	if err != nil {
		return stockLevel{}, err
	}
	msg := &postbox.Message{Topic: stockQueries, Type: "stock.query.v1", Key: sku, Payload: payload}
	reply, err := rq.Request(ctx, msg)
	if err != nil {
		return stockLevel{}, err
	}
	level, err := postbox.Decode[stockLevel](reply.Payload)
	if err != nil {
		return stockLevel{}, err
	}
	_, err = pool.Exec(ctx, `INSERT INTO answers (request_id, requester, sku, on_hand) VALUES ($1, $2, $3, $4)`,
		msg.ID, requester, level.SKU, level.OnHand)
	return level, err
}

// reserve writes a reservation and sends its stock query in one
// transaction: both or neither.
func reserve(ctx context.Context, pool *pgxpool.Pool, rq *reqreply.Requester, sku string, qty int) error {
	payload, err := postbox.JSON(stockQuery{SKU: sku})
	if err != nil {
		return err
	}
	msg := &postbox.Message{ID: postbox.NewID(), Topic: stockQueries, Type: "stock.query.v1", Key: sku, Payload: payload}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO reservations (request_id, sku, qty) VALUES ($1, $2, $3)`, msg.ID, sku, qty); err != nil {
			return err
		}
		return rq.Send(ctx, tx, msg)
	})
}

// answer is the inventory service: it records the query and replies with
// the stock level, in one transaction.
func answer(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	q, err := postbox.Decode[stockQuery](d.Payload)
	if err != nil {
		return err
	}
	var level stockLevel
	if err := tx.QueryRow(ctx, `SELECT sku, on_hand FROM stock WHERE sku = $1`, q.SKU).Scan(&level.SKU, &level.OnHand); err != nil {
		return fmt.Errorf("stock of %s: %w", q.SKU, err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO stock_queries (request_id, sku) VALUES ($1, $2)`, d.ID, q.SKU); err != nil {
		return err
	}
	payload, err := postbox.JSON(level)
	if err != nil {
		return err
	}
	return reqreply.Reply(ctx, tx, d, &postbox.Message{Type: "stock.level.v1", Payload: payload})
}

// handleReply is checkout's Handler, for the replies no Request waits for:
// a reservation's (async) and one that came after its Request gave up
// (late). The reply names its request as its causation-id.
func handleReply(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	level, err := postbox.Decode[stockLevel](d.Payload)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `
		INSERT INTO handled_replies (reply_id, request_id, kind, sku, on_hand)
		SELECT $1, $2::uuid,
		       CASE WHEN EXISTS (SELECT 1 FROM reservations WHERE request_id = $2::uuid) THEN 'async' ELSE 'late' END,
		       $3, $4`, d.ID, d.Headers[postbox.HeaderCausationID], level.SKU, level.OnHand)
	return err
}

// sweepAll sweeps until no reply queue of checkout is left: a sweep drops
// a queue only once it has been orphaned for the Expiry, as that sweeper
// has seen it.
func sweepAll(ctx context.Context, pool *pgxpool.Pool, rq *reqreply.Requester) (int, error) {
	dropped := 0
	for range 100 {
		n, err := rq.Sweep(ctx)
		if err != nil {
			return dropped, err
		}
		dropped += n
		var left int
		if err := pool.QueryRow(ctx, replyQueuesSQL).Scan(&left); err != nil {
			return dropped, err
		}
		if left == 0 {
			return dropped, nil
		}
	}
	return dropped, errors.New("reply queues are still left after 100 sweeps")
}

func openPool(ctx context.Context, databaseURL string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("parse database URL: %w", err)
	}
	cfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open pool: %w", err)
	}
	return pool, nil
}

func collect(errs <-chan error) []error {
	var out []error
	for err := range errs {
		out = append(out, err)
	}
	return out
}

// workers run the relay, the consumers and the requesters until stopped.
type workers struct {
	wg    sync.WaitGroup
	mu    sync.Mutex
	stops []func()
	errs  []error
}

// start runs fn until ctx ends or the returned stop is called; stop waits
// for fn to return.
func (w *workers) start(ctx context.Context, name string, fn func(context.Context) error) func() {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	w.wg.Go(func() {
		defer close(done)
		if err := fn(ctx); err != nil {
			w.mu.Lock()
			w.errs = append(w.errs, fmt.Errorf("%s: %w", name, err))
			w.mu.Unlock()
		}
	})
	stop := sync.OnceFunc(func() { cancel(); <-done })
	w.mu.Lock()
	w.stops = append(w.stops, stop)
	w.mu.Unlock()
	return stop
}

// stop stops every worker and waits for them.
func (w *workers) stop() {
	w.mu.Lock()
	stops := w.stops
	w.mu.Unlock()
	for _, s := range stops {
		s()
	}
	w.wg.Wait()
}

func (w *workers) err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return errors.Join(w.errs...)
}

// newLogger writes text lines without timestamps to w.
func newLogger(w *lockedWriter, level slog.Level) *slog.Logger {
	noTime := func(groups []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey && len(groups) == 0 {
			return slog.Attr{}
		}
		return a
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: noTime}))
}

// lockedWriter serializes writes from goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
