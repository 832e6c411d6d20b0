package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/stats"
)

// DefaultTimeout bounds one scrape's backlog queries.
const DefaultTimeout = 3 * time.Second

// DatabaseConfig configures Database. Zero values mean the defaults.
type DatabaseConfig struct {
	// Timeout bounds one scrape's queries. Default DefaultTimeout.
	Timeout time.Duration
	// Stats bounds the work of each read (package stats).
	Stats stats.Options
	// ConstLabels are added to every metric (say, the database's name).
	ConstLabels prometheus.Labels
	// Logger receives the scrapes that failed. Default: silent.
	Logger *slog.Logger
}

// Database is a prometheus.Collector of a postbox database's backlog, read
// at scrape time through package stats: bounded work whatever the backlog,
// with counts past the cap estimated (postbox_inbox_depth_exact says
// where). The figures are the same for every process on a database: export
// them from one.
type Database struct {
	db  postbox.DBTX
	cfg DatabaseConfig

	up, outboxPending, outboxDue, lag, depth, waiting, exact, dead, oldest, handled *prometheus.Desc
}

// NewDatabase returns the collector of the database db (a pool, usually).
func NewDatabase(db postbox.DBTX, cfg DatabaseConfig) *Database {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	limit := cfg.Stats.Cap
	if limit == 0 {
		limit = stats.DefaultCap
	}
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, cfg.ConstLabels)
	}
	return &Database{
		db:  db,
		cfg: cfg,
		up: desc("postbox_database_up",
			"1 if the backlog queries of this scrape succeeded, else 0 (the other postbox_ gauges of the database are then missing)."),
		outboxPending: desc("postbox_outbox_pending",
			fmt.Sprintf("Committed outbox messages not yet relayed: exact up to %d, estimated past it.", limit)),
		outboxDue: desc("postbox_outbox_due",
			fmt.Sprintf("Outbox messages due now (no DeliverAt, or past): exact up to %d, estimated past it.", limit)),
		lag: desc("postbox_relay_lag_seconds",
			"Age of the oldest outbox message not yet relayed (0 when none)."),
		depth: desc("postbox_inbox_depth",
			"Pending deliveries per subscriber: state ready (may be handled now) or waiting (in backoff, delayed, or blocked behind their key).",
			"subscriber", "state"),
		waiting: desc("postbox_inbox_waiting",
			"Waiting deliveries per subscriber by reason: backoff (failed, waiting for the next attempt), delayed (DeliverAt ahead), blocked (behind their key's head).",
			"subscriber", "reason"),
		exact: desc("postbox_inbox_depth_exact",
			fmt.Sprintf("1 if the subscriber's depth and dead letter counts are exact, 0 if some are estimates (more than %d rows).", limit),
			"subscriber"),
		dead: desc("postbox_dead_letters",
			"Dead letters per subscriber (postbox dlq list).", "subscriber"),
		oldest: desc("postbox_inbox_oldest_pending_seconds",
			"Age of the oldest pending delivery per subscriber (0 when none): its lag.", "subscriber"),
		handled: desc("postbox_inbox_handled_per_minute",
			"Deliveries handled per minute over the rate window (a minute by default), per subscriber (from the dedup table).", "subscriber"),
	}
}

// Describe implements prometheus.Collector.
func (d *Database) Describe(ch chan<- *prometheus.Desc) {
	for _, desc := range []*prometheus.Desc{d.up, d.outboxPending, d.outboxDue, d.lag, d.depth, d.waiting, d.exact, d.dead, d.oldest, d.handled} {
		ch <- desc
	}
}

// Collect implements prometheus.Collector. A database that does not answer
// is postbox_database_up 0, not a failed scrape.
func (d *Database) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.Timeout)
	defer cancel()
	ov, err := d.cfg.Stats.Read(ctx, d.db)
	gauge := func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	}
	if err != nil {
		d.cfg.Logger.Warn("metrics: backlog queries failed", "err", err)
		gauge(d.up, 0)
		return
	}
	gauge(d.up, 1)
	gauge(d.outboxPending, float64(ov.Outbox.Pending.N))
	gauge(d.outboxDue, float64(ov.Outbox.Due.N))
	gauge(d.lag, ov.Outbox.Age.Seconds())
	for _, s := range ov.Subscribers {
		gauge(d.depth, float64(s.Ready.N), s.Name, "ready")
		gauge(d.depth, float64(s.Waiting.N), s.Name, "waiting")
		gauge(d.waiting, float64(s.InBackoff.N), s.Name, "backoff")
		gauge(d.waiting, float64(s.Delayed.N), s.Name, "delayed")
		gauge(d.waiting, float64(s.Blocked.N), s.Name, "blocked")
		exact := 0.0
		if s.Ready.Exact && s.Waiting.Exact && s.Dead.Exact {
			exact = 1
		}
		gauge(d.exact, exact, s.Name)
		gauge(d.dead, float64(s.Dead.N), s.Name)
		gauge(d.oldest, s.Lag.Seconds(), s.Name)
		gauge(d.handled, s.HandledPerMinute, s.Name)
	}
}
