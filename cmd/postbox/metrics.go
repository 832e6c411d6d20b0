package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/postbox-dev/postbox/internal/db"
	"github.com/postbox-dev/postbox/relay"
)

// Timeouts of the HTTP endpoints' database work.
const (
	healthTimeout = time.Second
	scrapeTimeout = 3 * time.Second
)

// scrapeOutboxCap bounds the outbox rows a scrape counts: counting every
// row of a large backlog would make each scrape cost what the backlog costs.
const scrapeOutboxCap = 100_000

// newServer serves /healthz, /readyz and /metrics for a running relay.
func newServer(pool *pgxpool.Pool, r *relay.Relay, ready *atomic.Bool, log *slog.Logger) *http.Server {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newRelayCollector(r),
		newDBCollector(pool, log),
	)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, req *http.Request) {
		ctx, cancel := context.WithTimeout(req.Context(), healthTimeout)
		defer cancel()
		if err := pool.Ping(ctx); err != nil {
			log.Warn("health check: database does not answer", "err", err)
			http.Error(w, "database does not answer", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, req *http.Request) {
		if !ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(log.Handler(), slog.LevelError),
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4, // each scrape queries the database
	}))
	return &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
	}
}

// relayCollector reports a relay's counters (relay.Stats) and when it last
// succeeded, at scrape time.
type relayCollector struct {
	r                                                                  *relay.Relay
	messages, deliveries, duplicates, batches, unrouted, noRoute, errs *prometheus.Desc
	quarantined, emptied, lastSuccess, lastMoved                       *prometheus.Desc
}

func newRelayCollector(r *relay.Relay) *relayCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("postbox_relay_"+name, help, nil, nil)
	}
	return &relayCollector{
		r:          r,
		messages:   d("messages_total", "Outbox messages claimed and moved by this relay."),
		deliveries: d("deliveries_total", "Deliveries (one per subscriber and message) written to the inbox stream by this relay."),
		duplicates: d("duplicates_total", "Deliveries dropped because the subscriber had already handled the message ID."),
		batches:    d("batches_total", "Relay transactions that moved at least one message."),
		unrouted:   d("unrouted_total", "Topic messages no subscription matched, dropped."),
		noRoute:    d("no_route_total", "Queue sends to an undeclared queue, kept as no-route dead letters."),
		errs:       d("errors_total", "Relay batches that failed and were retried."),
		quarantined: d("quarantined_total",
			"Outbox rows the relay could not move, quarantined as dead letters of _relay (postbox dlq list --subscriber _relay)."),
		emptied: d("slots_emptied_total", "Outbox and inbox slots truncated once nothing in them was needed."),
		lastSuccess: d("last_success_timestamp_seconds",
			"Unix time of the last relay statement that succeeded, moving messages or finding none (0 before the first)."),
		lastMoved: d("last_moved_timestamp_seconds", "Unix time of the last batch that moved messages (0 before the first)."),
	}
}

func (c *relayCollector) descs() []*prometheus.Desc {
	return []*prometheus.Desc{c.messages, c.deliveries, c.duplicates, c.batches, c.unrouted, c.noRoute, c.errs,
		c.quarantined, c.emptied, c.lastSuccess, c.lastMoved}
}

func (c *relayCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs() {
		ch <- d
	}
}

// unixSeconds is t as a gauge value, 0 for the zero time.
func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

func (c *relayCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.r.Stats()
	for _, m := range []struct {
		d *prometheus.Desc
		v int64
	}{
		{c.messages, st.Claimed}, {c.deliveries, st.Delivered}, {c.duplicates, st.Duplicates}, {c.batches, st.Batches},
		{c.unrouted, st.Unrouted}, {c.noRoute, st.NoRoute}, {c.errs, st.Errors},
		{c.quarantined, st.Quarantined}, {c.emptied, st.Emptied},
	} {
		ch <- prometheus.MustNewConstMetric(m.d, prometheus.CounterValue, float64(m.v))
	}
	ch <- prometheus.MustNewConstMetric(c.lastSuccess, prometheus.GaugeValue, unixSeconds(c.r.LastSuccess()))
	ch <- prometheus.MustNewConstMetric(c.lastMoved, prometheus.GaugeValue, unixSeconds(c.r.LastMoved()))
}

// dbCollector reports the database's backlog at scrape time: the outbox
// waiting for a relay and each subscriber's inbox. These are the same for
// every relay on a database; alert on them from one.
type dbCollector struct {
	pool *pgxpool.Pool
	log  *slog.Logger

	up, outboxWaiting, lag, depth, dead, oldest *prometheus.Desc
}

func newDBCollector(pool *pgxpool.Pool, log *slog.Logger) *dbCollector {
	return &dbCollector{
		pool: pool,
		log:  log,
		up: prometheus.NewDesc("postbox_database_up",
			"1 if the backlog queries of this scrape succeeded, else 0 (the postbox_ gauges below are then missing).", nil, nil),
		outboxWaiting: prometheus.NewDesc("postbox_outbox_waiting",
			fmt.Sprintf("Committed outbox messages not yet relayed, counted up to %d.", scrapeOutboxCap), nil, nil),
		lag: prometheus.NewDesc("postbox_relay_lag_seconds",
			"Age of the oldest outbox message not yet relayed (0 when none).", nil, nil),
		depth: prometheus.NewDesc("postbox_inbox_depth",
			"Pending deliveries per subscriber: state ready (claimable now) or waiting (in backoff, delayed, or behind their key).",
			[]string{"subscriber", "state"}, nil),
		dead: prometheus.NewDesc("postbox_dead_letters",
			"Dead letters per subscriber (postbox dlq list).", []string{"subscriber"}, nil),
		oldest: prometheus.NewDesc("postbox_inbox_oldest_pending_seconds",
			"Age of the oldest pending delivery per subscriber (0 when none).", []string{"subscriber"}, nil),
	}
}

func (c *dbCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.outboxWaiting, c.lag, c.depth, c.dead, c.oldest} {
		ch <- d
	}
}

func (c *dbCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	q := db.New(c.pool)
	backlog, err := q.OutboxBacklog(ctx, scrapeOutboxCap)
	var depths []db.QueueDepthsRow
	if err == nil {
		depths, err = q.QueueDepths(ctx)
	}
	if err != nil {
		c.log.Warn("metrics: backlog queries failed", "err", err)
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(c.outboxWaiting, prometheus.GaugeValue, float64(backlog.Waiting))
	ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, backlog.OldestSeconds)
	for _, d := range depths {
		ch <- prometheus.MustNewConstMetric(c.depth, prometheus.GaugeValue, float64(d.Ready), d.Subscriber, "ready")
		ch <- prometheus.MustNewConstMetric(c.depth, prometheus.GaugeValue, float64(d.Waiting), d.Subscriber, "waiting")
		ch <- prometheus.MustNewConstMetric(c.dead, prometheus.GaugeValue, float64(d.Dead), d.Subscriber)
		ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, d.OldestPendingSeconds, d.Subscriber)
	}
}
