// Command scatter-gather is the seed's quote story on postbox: for each
// order, checkout asks inventory, payment and shipping for a quote, and
// combines the three into one.
//
// Checkout writes each order and scatters its quote request to the three
// queues in one transaction (scattergather.Scatter, which also opens the
// order's gather). Each service answers from its handler with
// reqreply.Reply, in the transaction that records its quote. The replies
// are gathered in PostgreSQL (package aggregate): an order's combined quote
// is published once all three are in, in the transaction that gathers the
// last one. Shipping does not deliver to Antarctica yet: that order's
// request is a dead letter, and its gather times out with the two quotes
// that came. Once shipping is fixed, the dead letter is replayed; its quote
// comes after the gather completed, and is recorded as late, not combined
// again.
//
//	go run ./examples/scatter-gather
//
// Progress goes to stderr; stdout gets one line counted in the database:
//
//	scatter-gather: orders=5 requests=15 replies=15 quotes=5 complete=4 timed_out=1 late=1 duplicates=0 dead=0
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
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/aggregate"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/dlq"
	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/outbox"
	"github.com/postbox-dev/postbox/relay"
	"github.com/postbox-dev/postbox/reqreply"
	"github.com/postbox-dev/postbox/scattergather"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := setUpAndRun(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "scatter-gather:", err)
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

// The services that quote, and the queue the combined quotes go to.
var services = []string{"inventory", "payment", "shipping"}

const combinedQuotes = "checkout.quotes"

type order struct {
	ID      string `json:"id"`
	Country string `json:"country"`
	Items   int    `json:"items"`
}

var orders = []order{
	{ID: "ord-2001", Country: "FR", Items: 1},
	{ID: "ord-2002", Country: "DE", Items: 3},
	{ID: "ord-2003", Country: "AQ", Items: 2}, // shipping cannot quote it yet
	{ID: "ord-2004", Country: "IT", Items: 5},
	{ID: "ord-2005", Country: "FR", Items: 2},
}

type quote struct {
	Service string `json:"service"`
	Cents   int    `json:"cents"`
}

type combined struct {
	Order      string  `json:"order"`
	TotalCents int     `json:"totalCents"`
	Quotes     []quote `json:"quotes"`
	TimedOut   bool    `json:"timedOut"`
}

// run plays the story on a database already migrated to the postbox
// schema, logs progress to stderr and prints the summary to stdout.
func run(ctx context.Context, databaseURL string, stdout, stderr io.Writer) error {
	out := &lockedWriter{w: stderr}
	log := newLogger(out, slog.LevelInfo) // the story
	lib := newLogger(out, slog.LevelWarn) // postbox itself: failures only
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()

	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return fmt.Errorf("parse database URL: %w", err)
	}
	cfg.MaxConns = 16
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("open pool: %w", err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, tablesSQL); err != nil {
		return fmt.Errorf("create the example's tables: %w", err)
	}

	sg, err := scattergather.New(scattergather.Config{
		Name:          "quotes",
		Timeout:       300 * time.Millisecond,
		Build:         combine,
		Deliver:       outbox.Send,
		Late:          inbox.HandlerFunc(recordLate),
		SweepInterval: 20 * time.Millisecond,
		Logger:        lib,
	})
	if err != nil {
		return err
	}
	if err := sg.Declare(ctx, pool, dispatcher.Options{}); err != nil {
		return err
	}
	for _, q := range append([]string{combinedQuotes}, services...) {
		if err := dispatcher.DeclareQueue(ctx, pool, q, dispatcher.Options{}); err != nil {
			return err
		}
	}

	var w workers
	defer w.stop()
	r, err := relay.New(pool, relay.Config{PollInterval: 5 * time.Millisecond, Logger: lib})
	if err != nil {
		return err
	}
	w.start(ctx, "relay", r.Run)
	handlers := map[string]inbox.HandlerFunc{
		"inventory":     quoteInventory,
		"payment":       quotePayment,
		"shipping":      quoteShipping,
		sg.ReplyQueue(): sg.Handle,
		combinedQuotes:  recordCombined,
	}
	for queue, h := range handlers {
		c, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: queue, Handler: h, Concurrency: 2,
			PollInterval: 5 * time.Millisecond, Logger: lib})
		if err != nil {
			return err
		}
		w.start(ctx, queue, c.Run)
	}

	// Checkout: each order and its quote requests, in one transaction.
	for _, o := range orders {
		if err := placeOrder(ctx, pool, sg, o); err != nil {
			return err
		}
	}
	log.Info("orders placed; quote requests scattered", "orders", len(orders), "services", strings.Join(services, ","))
	if err := waitFor(ctx, pool, "four complete quotes", `SELECT count(*) = $1 FROM quotes`, len(orders)-1); err != nil {
		return err
	}
	// The sweeper fires the timeouts. A service runs it all along; here it
	// starts once the four answered orders are combined, so that a slow
	// machine cannot time out a gather whose replies are merely late to
	// arrive, and every run prints the same line.
	w.start(ctx, "sweeper", func(ctx context.Context) error { return sg.Run(ctx, pool) })
	if err := waitFor(ctx, pool, "every order's combined quote", `SELECT count(*) = $1 FROM quotes`, len(orders)); err != nil {
		return err
	}
	if err := waitSettled(ctx, pool); err != nil {
		return err
	}
	if err := logQuotes(ctx, pool, log); err != nil {
		return err
	}

	// Shipping learns about Antarctica; its dead letter is replayed.
	if _, err := pool.Exec(ctx, `INSERT INTO shipping_zones VALUES ('AQ', 9900)`); err != nil {
		return err
	}
	n, err := dlq.Replay(ctx, pool, dlq.Filter{Subscriber: "shipping"})
	if err != nil {
		return err
	}
	log.Info("shipping fixed; its dead letter replayed", "replayed", n)
	if err := waitFor(ctx, pool, "the late quote", `SELECT count(*) = $1 FROM late_quotes`, 1); err != nil {
		return err
	}
	if err := waitSettled(ctx, pool); err != nil {
		return err
	}
	log.Info("the late shipping quote was recorded, not combined again")

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

// placeOrder writes the order and scatters its quote request to the three
// services: the order and the requests commit together, or neither does.
// The gather's key is the order ID (the request's correlation-id).
func placeOrder(ctx context.Context, pool *pgxpool.Pool, sg *scattergather.ScatterGather, o order) error {
	payload, err := postbox.JSON(o)
	if err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO orders (id, country, items) VALUES ($1, $2, $3)`, o.ID, o.Country, o.Items); err != nil {
			return err
		}
		_, err := sg.Scatter(ctx, tx, &postbox.Message{Type: "quote.request.v1", Payload: payload,
			Headers: map[string]string{postbox.HeaderCorrelationID: o.ID}},
			scattergather.Recipients{Queues: services})
		return err
	})
}

// The services. Each records its quote and replies with it, in one
// transaction.

func quoteInventory(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	return quoteWith(ctx, tx, d, "inventory", func(o order) (int, error) { return 1999 * o.Items, nil })
}

func quotePayment(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	return quoteWith(ctx, tx, d, "payment", func(o order) (int, error) { return 35 + 40*o.Items, nil })
}

func quoteShipping(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	return quoteWith(ctx, tx, d, "shipping", func(o order) (int, error) {
		var each int
		err := tx.QueryRow(ctx, `SELECT cents_each FROM shipping_zones WHERE country = $1`, o.Country).Scan(&each)
		if errors.Is(err, pgx.ErrNoRows) {
			// Retrying will not help until the zones change: a dead letter
			// at once, replayed once they have.
			return 0, postbox.Permanent(fmt.Errorf("no shipping to %s", o.Country))
		}
		return each * o.Items, err
	})
}

func quoteWith(ctx context.Context, tx pgx.Tx, d *inbox.Delivery, service string, price func(order) (int, error)) error {
	o, err := postbox.Decode[order](d.Payload)
	if err != nil {
		return err
	}
	cents, err := price(o)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO quotes_given (service, order_id, cents) VALUES ($1, $2, $3)`, service, o.ID, cents); err != nil {
		return err
	}
	payload, err := postbox.JSON(quote{Service: service, Cents: cents})
	if err != nil {
		return err
	}
	return reqreply.Reply(ctx, tx, d, &postbox.Message{Type: "quote.v1", Payload: payload})
}

// combine is the gather's Build: one combined quote from the replies that
// came (one per service, in service order).
func combine(a *aggregate.Aggregate) (*postbox.Message, error) {
	c := combined{Order: a.Key, Quotes: []quote{}, TimedOut: a.TimedOut}
	for _, p := range a.Parts {
		q, err := postbox.Decode[quote](p.Payload)
		if err != nil {
			return nil, err
		}
		c.Quotes = append(c.Quotes, q)
		c.TotalCents += q.Cents
	}
	payload, err := postbox.JSON(c)
	if err != nil {
		return nil, err
	}
	return &postbox.Message{Topic: combinedQuotes, Type: "quote.combined.v1", Key: a.Key, Payload: payload}, nil
}

// recordCombined is checkout's consumer of the combined quotes.
func recordCombined(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	c, err := postbox.Decode[combined](d.Payload)
	if err != nil {
		return err
	}
	var sources []string
	for _, q := range c.Quotes {
		sources = append(sources, q.Service)
	}
	_, err = tx.Exec(ctx, `INSERT INTO quotes (order_id, total_cents, sources, timed_out) VALUES ($1, $2, $3, $4)`,
		c.Order, c.TotalCents, strings.Join(sources, ","), c.TimedOut)
	return err
}

// recordLate is the gather's Late handler: a quote that came after its
// order's gather had completed.
func recordLate(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) error {
	_, err := tx.Exec(ctx, `INSERT INTO late_quotes (order_id, service) VALUES ($1, $2)`,
		d.Headers[postbox.HeaderCorrelationID], d.Headers[reqreply.HeaderReplier])
	return err
}

func logQuotes(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) error {
	rows, err := pool.Query(ctx, `SELECT order_id, total_cents, sources, timed_out FROM quotes ORDER BY order_id`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var id, sources string
		var cents int
		var timedOut bool
		if err := rows.Scan(&id, &cents, &sources, &timedOut); err != nil {
			return err
		}
		log.Info("combined quote", "order", id, "total", fmt.Sprintf("%d.%02d", cents/100, cents%100),
			"from", sources, "timed_out", timedOut)
	}
	return rows.Err()
}

// workers run the relay, the consumers and the sweeper until stopped.
type workers struct {
	wg    sync.WaitGroup
	mu    sync.Mutex
	stops []func()
	errs  []error
}

// start runs fn until ctx ends or stop is called.
func (w *workers) start(ctx context.Context, name string, fn func(context.Context) error) {
	ctx, cancel := context.WithCancel(ctx)
	w.wg.Go(func() {
		if err := fn(ctx); err != nil {
			w.mu.Lock()
			w.errs = append(w.errs, fmt.Errorf("%s: %w", name, err))
			w.mu.Unlock()
		}
	})
	w.mu.Lock()
	w.stops = append(w.stops, cancel)
	w.mu.Unlock()
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
