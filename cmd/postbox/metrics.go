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

	"github.com/postbox-dev/postbox/relay"
	"github.com/postbox-dev/postbox/stats"
)

// Timeouts of the HTTP endpoints' database work.
const (
	healthTimeout = time.Second
	scrapeTimeout = 3 * time.Second
)

// server is what `postbox relay --http` serves: /healthz, /readyz,
// /metrics, and with --admin the admin pages under /admin/.
type server struct {
	pool       *pgxpool.Pool
	relay      *relay.Relay
	ready      *atomic.Bool
	started    time.Time
	stallAfter time.Duration // /readyz fails past this without progress
	collector  *relayCollector
	admin      http.Handler // nil without --admin
	log        *slog.Logger
}

// handler serves the endpoints.
func (s *server) handler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		s.collector,
		newDBCollector(s.pool, s.log),
	)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, req *http.Request) {
		ctx, cancel := context.WithTimeout(req.Context(), healthTimeout)
		defer cancel()
		if err := s.pool.Ping(ctx); err != nil {
			s.log.Warn("health check: database does not answer", "err", err)
			http.Error(w, "database does not answer", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, req *http.Request) {
		if !s.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		if err := s.stalled(req.Context()); err != nil {
			s.log.Warn("readiness: relay stalled", "err", err)
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(s.log.Handler(), slog.LevelError),
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4, // each scrape queries the database
	}))
	if s.admin != nil {
		mux.Handle("/admin/", http.StripPrefix("/admin", s.admin))
	}
	return mux
}

// newHTTPServer wraps a handler with the timeouts every endpoint gets.
func newHTTPServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
	}
}

// stalled says why the relay is not doing its job, or nil: due messages
// wait and either no relay statement has succeeded for stallAfter (the
// statements fail or hang), or statements succeed but this relay has moved
// nothing for stallAfter while the oldest due message has waited as long
// (another relay holds their partitions and is stuck). While the relay
// succeeds and moves messages, no query is made.
func (s *server) stalled(ctx context.Context) error {
	now := time.Now()
	since := func(t time.Time) time.Duration {
		if t.IsZero() {
			t = s.started
		}
		return now.Sub(t)
	}
	okAgo, movedAgo := since(s.relay.LastSuccess()), since(s.relay.LastMoved())
	if okAgo < s.stallAfter && movedAgo < s.stallAfter {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, healthTimeout)
	defer cancel()
	b, err := stats.Outbox(ctx, s.pool)
	switch {
	case okAgo >= s.stallAfter && err != nil:
		return fmt.Errorf("no relay statement has succeeded for %s, and the outbox cannot be read: %v", okAgo.Round(time.Second), err)
	case okAgo >= s.stallAfter && b.Due.N > 0:
		return fmt.Errorf("no relay statement has succeeded for %s while %s due messages wait", okAgo.Round(time.Second), b.Due)
	case err != nil:
		return fmt.Errorf("the outbox cannot be read: %v", err)
	case b.Due.N > 0 && b.DueAge >= s.stallAfter:
		return fmt.Errorf("%s due messages wait, the oldest for %s, and this relay has moved none for %s (is another relay holding their partitions?)",
			b.Due, b.DueAge.Round(time.Second), movedAgo.Round(time.Second))
	}
	return nil
}

// relayCollector reports a relay's counters (relay.Stats) and when it last
// succeeded, at scrape time.
type relayCollector struct {
	r                                                                 *relay.Relay // set once the relay exists
	messages, deliveries, duplicates, batches, dropped, noRoute, errs *prometheus.Desc
	quarantined, emptied, lastSuccess, lastMoved                      *prometheus.Desc
	// duration of the batches that moved messages, from OnBatch
	duration prometheus.Histogram
}

func newRelayCollector() *relayCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("postbox_relay_"+name, help, nil, nil)
	}
	return &relayCollector{
		messages:   d("messages_total", "Outbox messages claimed and moved by this relay."),
		deliveries: d("deliveries_total", "Deliveries (one per subscriber and message) written to the inbox stream by this relay."),
		duplicates: d("duplicates_total", "Deliveries dropped because the subscriber had already handled the message ID."),
		batches:    d("batches_total", "Relay transactions that moved at least one message."),
		dropped:    d("dropped_total", "Topic messages no subscription matched, dropped."),
		noRoute:    d("no_route_total", "Queue sends to an undeclared queue, kept as no-route dead letters."),
		errs:       d("errors_total", "Relay batches that failed and were retried."),
		quarantined: d("quarantined_total",
			"Outbox rows the relay could not move, quarantined as dead letters of _relay (postbox dlq list --subscriber _relay)."),
		emptied: d("slots_emptied_total", "Outbox and inbox slots truncated once nothing in them was needed."),
		lastSuccess: d("last_success_timestamp_seconds",
			"Unix time of the last relay statement that succeeded, moving messages or finding none (0 before the first)."),
		lastMoved: d("last_moved_timestamp_seconds", "Unix time of the last batch that moved messages (0 before the first)."),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "postbox_relay_batch_duration_seconds",
			Help:    "Time of the relay statements (or Sink deliveries) that moved messages: claim, route and write in one.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16), // 0.5ms to 16s
		}),
	}
}

// observe is the relay's Config.OnBatch.
func (c *relayCollector) observe(b relay.BatchInfo) { c.duration.Observe(b.Duration.Seconds()) }

func (c *relayCollector) descs() []*prometheus.Desc {
	return []*prometheus.Desc{c.messages, c.deliveries, c.duplicates, c.batches, c.dropped, c.noRoute, c.errs,
		c.quarantined, c.emptied, c.lastSuccess, c.lastMoved}
}

func (c *relayCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs() {
		ch <- d
	}
	c.duration.Describe(ch)
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
		{c.dropped, st.Dropped}, {c.noRoute, st.NoRoute}, {c.errs, st.Errors},
		{c.quarantined, st.Quarantined}, {c.emptied, st.Emptied},
	} {
		ch <- prometheus.MustNewConstMetric(m.d, prometheus.CounterValue, float64(m.v))
	}
	ch <- prometheus.MustNewConstMetric(c.lastSuccess, prometheus.GaugeValue, unixSeconds(c.r.LastSuccess()))
	ch <- prometheus.MustNewConstMetric(c.lastMoved, prometheus.GaugeValue, unixSeconds(c.r.LastMoved()))
	c.duration.Collect(ch)
}

// dbCollector reports the database's backlog at scrape time, through
// package stats: bounded work whatever the backlog, with counts past the cap
// estimated (postbox_inbox_depth_exact says where). These are the same for
// every relay on a database; alert on them from one. contrib/prometheus
// exports the same series for services.
type dbCollector struct {
	pool *pgxpool.Pool
	log  *slog.Logger

	up, outboxPending, outboxDue, lag, depth, waiting, exact, dead, oldest, handled *prometheus.Desc
}

func newDBCollector(pool *pgxpool.Pool, log *slog.Logger) *dbCollector {
	sub := []string{"subscriber"}
	return &dbCollector{
		pool: pool,
		log:  log,
		up: prometheus.NewDesc("postbox_database_up",
			"1 if the backlog queries of this scrape succeeded, else 0 (the postbox_ gauges below are then missing).", nil, nil),
		outboxPending: prometheus.NewDesc("postbox_outbox_pending",
			fmt.Sprintf("Committed outbox messages not yet relayed: exact up to %d, estimated past it.", stats.DefaultCap), nil, nil),
		outboxDue: prometheus.NewDesc("postbox_outbox_due",
			"Outbox messages due now (no DeliverAt, or past): exact up to the cap, estimated past it.", nil, nil),
		lag: prometheus.NewDesc("postbox_relay_lag_seconds",
			"Age of the oldest outbox message not yet relayed (0 when none).", nil, nil),
		depth: prometheus.NewDesc("postbox_inbox_depth",
			"Pending deliveries per subscriber: state ready (may be handled now) or waiting (in backoff, delayed, or blocked behind their key).",
			[]string{"subscriber", "state"}, nil),
		waiting: prometheus.NewDesc("postbox_inbox_waiting",
			"Waiting deliveries per subscriber by reason: backoff (failed, waiting for the next attempt), delayed (DeliverAt ahead), blocked (behind their key's head).",
			[]string{"subscriber", "reason"}, nil),
		exact: prometheus.NewDesc("postbox_inbox_depth_exact",
			fmt.Sprintf("1 if the subscriber's depth and dead letter counts are exact, 0 if some are estimates (more than %d rows).", stats.DefaultCap),
			sub, nil),
		dead: prometheus.NewDesc("postbox_dead_letters",
			"Dead letters per subscriber (postbox dlq list).", sub, nil),
		oldest: prometheus.NewDesc("postbox_inbox_oldest_pending_seconds",
			"Age of the oldest pending delivery per subscriber (0 when none): its lag.", sub, nil),
		handled: prometheus.NewDesc("postbox_inbox_handled_per_minute",
			"Deliveries handled per minute over the last minute, per subscriber (from the dedup table).", sub, nil),
	}
}

func (c *dbCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.outboxPending, c.outboxDue, c.lag, c.depth, c.waiting, c.exact, c.dead, c.oldest, c.handled} {
		ch <- d
	}
}

func (c *dbCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	ov, err := stats.Read(ctx, c.pool)
	if err != nil {
		c.log.Warn("metrics: backlog queries failed", "err", err)
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(c.up, 1)
	gauge(c.outboxPending, float64(ov.Outbox.Pending.N))
	gauge(c.outboxDue, float64(ov.Outbox.Due.N))
	gauge(c.lag, ov.Outbox.Age.Seconds())
	for _, s := range ov.Subscribers {
		gauge(c.depth, float64(s.Ready.N), s.Name, "ready")
		gauge(c.depth, float64(s.Waiting.N), s.Name, "waiting")
		gauge(c.waiting, float64(s.InBackoff.N), s.Name, "backoff")
		gauge(c.waiting, float64(s.Delayed.N), s.Name, "delayed")
		gauge(c.waiting, float64(s.Blocked.N), s.Name, "blocked")
		exact := 0.0
		if s.Ready.Exact && s.Waiting.Exact && s.Dead.Exact {
			exact = 1
		}
		gauge(c.exact, exact, s.Name)
		gauge(c.dead, float64(s.Dead.N), s.Name)
		gauge(c.oldest, s.Lag.Seconds(), s.Name)
		gauge(c.handled, s.HandledPerMinute, s.Name)
	}
}
