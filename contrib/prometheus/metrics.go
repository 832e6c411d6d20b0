package postboxprom

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/postbox-dev/postbox/inbox"
	"github.com/postbox-dev/postbox/relay"
)

// DefaultBuckets are the duration histograms' buckets: 0.5ms to 16s.
var DefaultBuckets = prometheus.ExponentialBuckets(0.0005, 2, 16)

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
	mu        sync.Mutex
	consumers []watchedConsumer
	relays    []*relay.Relay

	batch, claim  *prometheus.HistogramVec // per subscriber
	relayDuration prometheus.Histogram

	consumerCounters []counter[inbox.Stats]
	relayCounters    []counter[relay.Stats]
	lastSuccess      *prometheus.Desc
	lastMoved        *prometheus.Desc
}

type watchedConsumer struct {
	subscriber string
	c          *inbox.Consumer
}

// counter is one counter read from a Stats value.
type counter[S any] struct {
	desc  *prometheus.Desc
	value func(S) int64
}

// New returns the metrics; register them with a prometheus.Registerer.
func New(cfg Config) *Metrics {
	buckets := cfg.Buckets
	if len(buckets) == 0 {
		buckets = DefaultBuckets
	}
	sub := []string{"subscriber"}
	m := &Metrics{
		batch: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "postbox_consumer_batch_duration_seconds", ConstLabels: cfg.ConstLabels, Buckets: buckets,
			Help: "Time of the consumer's committed batches, from the claim to the commit.",
		}, sub),
		claim: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "postbox_consumer_claim_duration_seconds", ConstLabels: cfg.ConstLabels, Buckets: buckets,
			Help: "Time of the claim statement of the consumer's committed batches: the cost of finding work.",
		}, sub),
		relayDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "postbox_relay_batch_duration_seconds", ConstLabels: cfg.ConstLabels, Buckets: buckets,
			Help: "Time of the relay statements (or Sink deliveries) that moved messages: claim, route and write in one.",
		}),
		lastSuccess: prometheus.NewDesc("postbox_relay_last_success_timestamp_seconds",
			"Unix time of the last relay statement that succeeded, moving messages or finding none (0 before the first).",
			nil, cfg.ConstLabels),
		lastMoved: prometheus.NewDesc("postbox_relay_last_moved_timestamp_seconds",
			"Unix time of the last batch that moved messages (0 before the first).", nil, cfg.ConstLabels),
	}
	cc := func(name, help string, value func(inbox.Stats) int64) {
		m.consumerCounters = append(m.consumerCounters, counter[inbox.Stats]{
			prometheus.NewDesc("postbox_consumer_"+name, help, sub, cfg.ConstLabels), value})
	}
	cc("handled_total", "Deliveries handled and committed.", func(s inbox.Stats) int64 { return s.Handled })
	cc("failed_total", "Failed attempts that will be retried.", func(s inbox.Stats) int64 { return s.Failed })
	cc("dead_total", "Deliveries dead-lettered.", func(s inbox.Stats) int64 { return s.Dead })
	cc("duplicates_total", "Deliveries dropped as already handled within the dedup window.", func(s inbox.Stats) int64 { return s.Duplicates })
	cc("batches_total", "Transactions that handled at least one delivery.", func(s inbox.Stats) int64 { return s.Batches })
	cc("errors_total", "Batches that failed as a whole (connection, commit).", func(s inbox.Stats) int64 { return s.Errors })
	cc("claims_total", "Claim statements.", func(s inbox.Stats) int64 { return s.Claims })
	cc("empty_claims_total", "Claim statements that found nothing: an idle consumer's whole cost.", func(s inbox.Stats) int64 { return s.EmptyClaims })
	cc("conflicts_total", "Claimed partitions another consumer took first; their deliveries were left to it.", func(s inbox.Stats) int64 { return s.Conflicts })

	rc := func(name, help string, value func(relay.Stats) int64) {
		m.relayCounters = append(m.relayCounters, counter[relay.Stats]{
			prometheus.NewDesc("postbox_relay_"+name, help, nil, cfg.ConstLabels), value})
	}
	rc("messages_total", "Outbox messages claimed and moved.", func(s relay.Stats) int64 { return s.Claimed })
	rc("deliveries_total", "Deliveries (one per subscriber and message) written to the inbox stream.", func(s relay.Stats) int64 { return s.Delivered })
	rc("duplicates_total", "Deliveries dropped because the subscriber had already handled the message ID.", func(s relay.Stats) int64 { return s.Duplicates })
	rc("batches_total", "Relay statements that moved at least one message.", func(s relay.Stats) int64 { return s.Batches })
	rc("dropped_total", "Topic messages no subscription matched, dropped.", func(s relay.Stats) int64 { return s.Dropped })
	rc("no_route_total", "Queue sends to an undeclared queue, kept as no-route dead letters.", func(s relay.Stats) int64 { return s.NoRoute })
	rc("errors_total", "Relay statements that failed and were retried.", func(s relay.Stats) int64 { return s.Errors })
	rc("quarantined_total", "Outbox rows the relay could not move, quarantined as dead letters of _relay.", func(s relay.Stats) int64 { return s.Quarantined })
	rc("slots_emptied_total", "Outbox and inbox slots truncated once nothing in them was needed.", func(s relay.Stats) int64 { return s.Emptied })
	return m
}

// OnConsumerBatch is an inbox.Config.OnBatch: it records the batch's and
// its claim's durations.
func (m *Metrics) OnConsumerBatch(b inbox.BatchInfo) {
	m.batch.WithLabelValues(b.Subscriber).Observe(b.Duration.Seconds())
	m.claim.WithLabelValues(b.Subscriber).Observe(b.Claimed.Seconds())
}

// OnRelayBatch is a relay.Config.OnBatch: it records the batch's duration.
func (m *Metrics) OnRelayBatch(b relay.BatchInfo) {
	m.relayDuration.Observe(b.Duration.Seconds())
}

// AddConsumer exports c's counters (inbox.Stats) under subscriber, read at
// scrape time. Consumers of one subscriber are summed.
func (m *Metrics) AddConsumer(subscriber string, c *inbox.Consumer) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.consumers = append(m.consumers, watchedConsumer{subscriber, c})
}

// AddRelay exports r's counters (relay.Stats), read at scrape time.
// Relays are summed; the timestamps are the latest of them.
func (m *Metrics) AddRelay(r *relay.Relay) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.relays = append(m.relays, r)
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.consumerCounters {
		ch <- c.desc
	}
	for _, c := range m.relayCounters {
		ch <- c.desc
	}
	ch <- m.lastSuccess
	ch <- m.lastMoved
	m.batch.Describe(ch)
	m.claim.Describe(ch)
	m.relayDuration.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	m.mu.Lock()
	consumers := append([]watchedConsumer(nil), m.consumers...)
	relays := append([]*relay.Relay(nil), m.relays...)
	m.mu.Unlock()

	bySubscriber := map[string][]inbox.Stats{}
	var order []string
	for _, w := range consumers {
		if _, ok := bySubscriber[w.subscriber]; !ok {
			order = append(order, w.subscriber)
		}
		bySubscriber[w.subscriber] = append(bySubscriber[w.subscriber], w.c.Stats())
	}
	for _, c := range m.consumerCounters {
		for _, sub := range order {
			var n int64
			for _, s := range bySubscriber[sub] {
				n += c.value(s)
			}
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n), sub)
		}
	}
	if len(relays) > 0 {
		stats := make([]relay.Stats, len(relays))
		var success, moved time.Time
		for i, r := range relays {
			stats[i] = r.Stats()
			success, moved = latest(success, r.LastSuccess()), latest(moved, r.LastMoved())
		}
		for _, c := range m.relayCounters {
			var n int64
			for _, s := range stats {
				n += c.value(s)
			}
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n))
		}
		ch <- prometheus.MustNewConstMetric(m.lastSuccess, prometheus.GaugeValue, unixSeconds(success))
		ch <- prometheus.MustNewConstMetric(m.lastMoved, prometheus.GaugeValue, unixSeconds(moved))
	}
	m.batch.Collect(ch)
	m.claim.Collect(ch)
	m.relayDuration.Collect(ch)
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
