package postboxprom

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/internal/metrics"
	"github.com/postbox-dev/postbox/relay"
)

// DefaultBuckets are the duration histograms' buckets: 0.5ms to 16s.
var DefaultBuckets = metrics.DefaultBuckets

// Config configures Metrics. Zero values mean the defaults.
type Config struct {
	// ConstLabels are added to every metric (say, the service's name).
	ConstLabels prometheus.Labels
	// Buckets of the duration histograms, in seconds. Default
	// DefaultBuckets.
	Buckets []float64
}

// Metrics is a prometheus.Collector of the consumers and relays of this
// process. Its methods are safe for concurrent use.
type Metrics struct {
	consumers *metrics.Consumers
	relays    *metrics.Relays
}

// New returns the metrics; register them with a prometheus.Registerer.
func New(cfg Config) *Metrics {
	if len(cfg.Buckets) == 0 {
		cfg.Buckets = DefaultBuckets
	}
	return &Metrics{consumers: metrics.NewConsumers(metrics.Config(cfg)), relays: metrics.NewRelays(metrics.Config(cfg))}
}

// OnConsumerBatch is an inbox.Config.OnBatch: it records the batch's and
// its claim's durations.
func (m *Metrics) OnConsumerBatch(b inbox.BatchInfo) { m.consumers.OnBatch(b) }

// OnRelayBatch is a relay.Config.OnBatch: it records the batch's duration.
func (m *Metrics) OnRelayBatch(b relay.BatchInfo) { m.relays.OnBatch(b) }

// AddConsumer exports c's counters (inbox.Stats) under subscriber, read at
// scrape time. Consumers of one subscriber are summed.
func (m *Metrics) AddConsumer(subscriber string, c *inbox.Consumer) { m.consumers.Add(subscriber, c) }

// AddRelay exports r's counters (relay.Stats), read at scrape time.
// Relays are summed; the timestamps are the latest of them.
func (m *Metrics) AddRelay(r *relay.Relay) { m.relays.Add(r) }

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	m.consumers.Describe(ch)
	m.relays.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.consumers.Collect(ch)
	m.relays.Collect(ch)
}
