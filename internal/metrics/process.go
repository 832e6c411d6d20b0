package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/relay"
)

// DefaultBuckets are the duration histograms' buckets: 0.5ms to 16s.
var DefaultBuckets = prometheus.ExponentialBuckets(0.0005, 2, 16)

// Config configures Relays and Consumers. Zero values mean the defaults.
type Config struct {
	// ConstLabels are added to every metric (say, the service's name).
	ConstLabels prometheus.Labels
	// Buckets of the duration histograms, in seconds. Default
	// DefaultBuckets.
	Buckets []float64
}

func (c Config) buckets() []float64 {
	if len(c.Buckets) == 0 {
		return DefaultBuckets
	}
	return c.Buckets
}

// counter is one counter read from a Stats value.
type counter[S any] struct {
	desc  *prometheus.Desc
	value func(S) int64
	unit  float64 // of value in the metric's unit; 0 means 1
}

// sum is the counter over every Stats value, as a metric.
func (c counter[S]) sum(values []S, labels ...string) prometheus.Metric {
	var n int64
	for _, s := range values {
		n += c.value(s)
	}
	v := float64(n)
	if c.unit != 0 {
		v *= c.unit
	}
	return prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, v, labels...)
}

// Relays is a prometheus.Collector of the relays of a process: their
// counters (relay.Stats, summed over the relays, read at scrape time), when
// the latest of them last succeeded and last moved messages, and the
// duration of their batches (from OnBatch). Without a relay it exports only
// the histogram. Its methods are safe for concurrent use.
type Relays struct {
	mu     sync.Mutex
	relays []*relay.Relay

	counters               []counter[relay.Stats]
	lastSuccess, lastMoved *prometheus.Desc
	duration               prometheus.Histogram
}

// NewRelays returns the relays' metrics, with no relay yet (see Add).
func NewRelays(cfg Config) *Relays {
	m := &Relays{
		lastSuccess: prometheus.NewDesc("postbox_relay_last_success_timestamp_seconds",
			"Unix time of the last relay statement that succeeded, moving messages or finding none (0 before the first).",
			nil, cfg.ConstLabels),
		lastMoved: prometheus.NewDesc("postbox_relay_last_moved_timestamp_seconds",
			"Unix time of the last relay batch that moved messages (0 before the first).", nil, cfg.ConstLabels),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "postbox_relay_batch_duration_seconds", ConstLabels: cfg.ConstLabels, Buckets: cfg.buckets(),
			Help: "Time of the relay statements (or Sink deliveries) that moved messages: claim, route and write in one.",
		}),
	}
	c := func(name, help string, value func(relay.Stats) int64) {
		m.counters = append(m.counters, counter[relay.Stats]{
			prometheus.NewDesc("postbox_relay_"+name, help, nil, cfg.ConstLabels), value, 1})
	}
	c("messages_total", "Outbox messages claimed and moved.", func(s relay.Stats) int64 { return s.Claimed })
	c("deliveries_total", "Deliveries (one per subscriber and message) written to the inbox stream.", func(s relay.Stats) int64 { return s.Delivered })
	c("duplicates_total", "Deliveries dropped because the subscriber had already handled the message ID.", func(s relay.Stats) int64 { return s.Duplicates })
	c("batches_total", "Relay statements that moved at least one message.", func(s relay.Stats) int64 { return s.Batches })
	c("dropped_total", "Topic messages no subscription matched, dropped.", func(s relay.Stats) int64 { return s.Dropped })
	c("no_route_total", "Queue sends to an undeclared queue, kept as no-route dead letters.", func(s relay.Stats) int64 { return s.NoRoute })
	c("errors_total", "Relay statements that failed and were retried.", func(s relay.Stats) int64 { return s.Errors })
	c("quarantined_total", "Outbox rows the relay could not move, quarantined as dead letters of _relay (postbox dlq list --subscriber _relay).",
		func(s relay.Stats) int64 { return s.Quarantined })
	c("slots_emptied_total", "Outbox and inbox slots truncated once nothing in them was needed.", func(s relay.Stats) int64 { return s.Emptied })
	return m
}

// Add exports r's counters and timestamps.
func (m *Relays) Add(r *relay.Relay) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.relays = append(m.relays, r)
}

// OnBatch is a relay.Config.OnBatch: it records the batch's duration.
func (m *Relays) OnBatch(b relay.BatchInfo) { m.duration.Observe(b.Duration.Seconds()) }

// Describe implements prometheus.Collector.
func (m *Relays) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.counters {
		ch <- c.desc
	}
	ch <- m.lastSuccess
	ch <- m.lastMoved
	m.duration.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Relays) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	relays := append([]*relay.Relay(nil), m.relays...)
	m.mu.Unlock()
	if len(relays) > 0 {
		st := make([]relay.Stats, len(relays))
		var success, moved time.Time
		for i, r := range relays {
			st[i] = r.Stats()
			success, moved = latest(success, r.LastSuccess()), latest(moved, r.LastMoved())
		}
		for _, c := range m.counters {
			ch <- c.sum(st)
		}
		ch <- prometheus.MustNewConstMetric(m.lastSuccess, prometheus.GaugeValue, unixSeconds(success))
		ch <- prometheus.MustNewConstMetric(m.lastMoved, prometheus.GaugeValue, unixSeconds(moved))
	}
	m.duration.Collect(ch)
}

// Consumers is a prometheus.Collector of the consumers of a process, per
// subscriber: their counters (inbox.Stats, summed over a subscriber's
// consumers, read at scrape time) and the durations of their committed
// batches and of those batches' claims (from OnBatch). Its methods are safe
// for concurrent use.
type Consumers struct {
	mu        sync.Mutex
	consumers []watchedConsumer

	counters     []counter[inbox.Stats]
	batch, claim *prometheus.HistogramVec
}

type watchedConsumer struct {
	subscriber string
	c          *inbox.Consumer
}

// NewConsumers returns the consumers' metrics, with no consumer yet (see
// Add).
func NewConsumers(cfg Config) *Consumers {
	sub := []string{"subscriber"}
	m := &Consumers{
		batch: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "postbox_consumer_batch_duration_seconds", ConstLabels: cfg.ConstLabels, Buckets: cfg.buckets(),
			Help: "Time of the consumer's committed batches, from the claim to the commit.",
		}, sub),
		claim: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "postbox_consumer_claim_duration_seconds", ConstLabels: cfg.ConstLabels, Buckets: cfg.buckets(),
			Help: "Time of the claim statement of the consumer's committed batches: the cost of finding work.",
		}, sub),
	}
	c := func(name, help string, value func(inbox.Stats) int64) {
		m.counters = append(m.counters, counter[inbox.Stats]{
			prometheus.NewDesc("postbox_consumer_"+name, help, sub, cfg.ConstLabels), value, 1})
	}
	c("handled_total", "Deliveries handled and committed.", func(s inbox.Stats) int64 { return s.Handled })
	c("failed_total", "Failed attempts that will be retried.", func(s inbox.Stats) int64 { return s.Failed })
	c("dead_total", "Deliveries dead-lettered.", func(s inbox.Stats) int64 { return s.Dead })
	c("duplicates_total", "Deliveries dropped as already handled within the dedup window.", func(s inbox.Stats) int64 { return s.Duplicates })
	c("batches_total", "Transactions that handled at least one delivery.", func(s inbox.Stats) int64 { return s.Batches })
	c("errors_total", "Batches that failed as a whole (connection, commit).", func(s inbox.Stats) int64 { return s.Errors })
	c("claims_total", "Claim statements.", func(s inbox.Stats) int64 { return s.Claims })
	c("empty_claims_total", "Claim statements that found nothing: an idle consumer's whole cost.", func(s inbox.Stats) int64 { return s.EmptyClaims })
	c("conflicts_total", "Claimed partitions another consumer took first; their deliveries were left to it.", func(s inbox.Stats) int64 { return s.Conflicts })
	m.counters = append(m.counters, counter[inbox.Stats]{
		prometheus.NewDesc("postbox_consumer_claim_seconds_total",
			"Time spent in claim statements, empty ones included: its rate over claims_total's rising while the backlog stays flat means claims walk what vacuum could not remove.",
			sub, cfg.ConstLabels),
		func(s inbox.Stats) int64 { return int64(s.ClaimTime) }, 1e-9})
	return m
}

// Add exports c's counters under subscriber. Consumers of one subscriber
// are summed.
func (m *Consumers) Add(subscriber string, c *inbox.Consumer) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.consumers = append(m.consumers, watchedConsumer{subscriber, c})
}

// OnBatch is an inbox.Config.OnBatch: it records the batch's and its
// claim's durations.
func (m *Consumers) OnBatch(b inbox.BatchInfo) {
	m.batch.WithLabelValues(b.Subscriber).Observe(b.Duration.Seconds())
	m.claim.WithLabelValues(b.Subscriber).Observe(b.Claimed.Seconds())
}

// Describe implements prometheus.Collector.
func (m *Consumers) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.counters {
		ch <- c.desc
	}
	m.batch.Describe(ch)
	m.claim.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Consumers) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	consumers := append([]watchedConsumer(nil), m.consumers...)
	m.mu.Unlock()

	bySubscriber := map[string][]inbox.Stats{}
	var order []string
	for _, w := range consumers {
		if _, ok := bySubscriber[w.subscriber]; !ok {
			order = append(order, w.subscriber)
		}
		bySubscriber[w.subscriber] = append(bySubscriber[w.subscriber], w.c.Stats())
	}
	for _, c := range m.counters {
		for _, sub := range order {
			ch <- c.sum(bySubscriber[sub], sub)
		}
	}
	m.batch.Collect(ch)
	m.claim.Collect(ch)
}

func latest(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// unixSeconds is t as a gauge value, 0 for the zero time.
func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}
