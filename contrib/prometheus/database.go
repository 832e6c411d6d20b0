package postboxprom

import (
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/internal/metrics"
	"github.com/postbox-dev/postbox/stats"
)

// DatabaseConfig configures Database. Zero values mean the defaults.
type DatabaseConfig struct {
	// Timeout bounds one scrape's queries. Default 3s.
	Timeout time.Duration
	// Stats bounds the work of each read (package stats).
	Stats stats.Options
	// ConstLabels are added to every metric (say, the database's name).
	ConstLabels prometheus.Labels
	// Logger receives the scrapes that failed. Default: silent.
	Logger *slog.Logger
}

// Database is a prometheus.Collector of a postbox database's backlog, read
// at scrape time through package stats.
type Database struct{ c *metrics.Database }

// NewDatabase returns the collector of the database db (a pool, usually).
func NewDatabase(db postbox.DBTX, cfg DatabaseConfig) *Database {
	return &Database{metrics.NewDatabase(db, metrics.DatabaseConfig(cfg))}
}

// Describe implements prometheus.Collector.
func (d *Database) Describe(ch chan<- *prometheus.Desc) { d.c.Describe(ch) }

// Collect implements prometheus.Collector.
func (d *Database) Collect(ch chan<- prometheus.Metric) { d.c.Collect(ch) }
