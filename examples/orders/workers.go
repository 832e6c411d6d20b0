package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/relay"
)

// consumerSpec is one consumer process of the story. Two specs with the
// same subscriber are competing consumers of one queue.
type consumerSpec struct {
	name       string
	subscriber string
	handler    inbox.Handler
	batchSize  int
}

var consumerSpecs = []consumerSpec{
	{name: "inventory", subscriber: "inventory", handler: inbox.HandlerFunc(reserveStock)},
	{name: "notifications", subscriber: "notifications", handler: inbox.HandlerFunc(notifyCustomer)},
	{name: "analytics", subscriber: "analytics", handler: inbox.HandlerFunc(countEvent)},
	{name: "high-value", subscriber: "high-value", handler: inbox.HandlerFunc(flagHighValue)},
	// Two consumers of one queue compete for its messages with SKIP
	// LOCKED; each message is handled by exactly one of them. Batches of
	// one let both get a share of this small demo's work.
	{name: "process-order/1", subscriber: queueProcessOrder, handler: processOrder, batchSize: 1},
	{name: "process-order/2", subscriber: queueProcessOrder, handler: processOrder, batchSize: 1},
	{name: "shipments", subscriber: queueShipments, handler: inbox.HandlerFunc(ship)},
}

// workers are the relay and the consumers, each running in its own
// goroutine until stop.
type workers struct {
	relay     *relay.Relay
	consumers []*inbox.Consumer // in consumerSpecs order

	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	errs   []error
}

// startWorkers starts the relay and one inbox.Consumer per spec. The
// subscribers must already be declared: a consumer reads its subscriber's
// retry settings when it starts.
func startWorkers(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) (*workers, error) {
	w := &workers{}
	r, err := relay.New(pool, relay.Config{Logger: log})
	if err != nil {
		return nil, err
	}
	w.relay = r
	for _, s := range consumerSpecs {
		c, err := inbox.NewConsumer(pool, inbox.Config{
			Subscriber:   s.subscriber,
			Handler:      s.handler,
			BatchSize:    s.batchSize,
			Concurrency:  2,
			PollInterval: 20 * time.Millisecond, // retries become due without a wake-up
			Logger:       log.With("consumer", s.name),
		})
		if err != nil {
			return nil, fmt.Errorf("consumer %s: %w", s.name, err)
		}
		w.consumers = append(w.consumers, c)
	}

	ctx, w.cancel = context.WithCancel(ctx)
	w.run(ctx, "relay", r.Run)
	for i, c := range w.consumers {
		w.run(ctx, consumerSpecs[i].name, c.Run)
	}
	return w, nil
}

func (w *workers) run(ctx context.Context, name string, run func(context.Context) error) {
	w.wg.Go(func() {
		if err := run(ctx); err != nil {
			w.mu.Lock()
			w.errs = append(w.errs, fmt.Errorf("%s: %w", name, err))
			w.mu.Unlock()
		}
	})
}

// stop cancels the workers and waits until every one has returned: each
// finishes the handler in flight and commits or rolls back its batch.
func (w *workers) stop() error {
	w.cancel()
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return errors.Join(w.errs...)
}

// logStats logs what the relay and the consumers counted in memory. The
// summary does not use these: it counts in the database.
func (w *workers) logStats(log *slog.Logger) {
	rs := w.relay.Stats()
	log.Info("relay", "moved", rs.Claimed, "deliveries_written", rs.Delivered, "duplicates_dropped", rs.Duplicates)
	var attrs []any
	var dups int64
	for i, c := range w.consumers {
		st := c.Stats()
		dups += st.Duplicates
		if consumerSpecs[i].subscriber == queueProcessOrder {
			attrs = append(attrs, consumerSpecs[i].name, st.Handled)
		}
	}
	log.Info("competing consumers handled", attrs...)
	log.Info("duplicates dropped by consumers", "count", dups)
}
