// Package postboxprom exports postbox's metrics to Prometheus: what the
// consumers and relays of a service do (counters and durations, the claim's
// among them), and, at scrape time, the database's backlog.
//
// Import it as github.com/postbox-dev/postbox/contrib/prometheus. It is a
// thin public face of the core's internal/metrics, which serves the
// binary's /metrics too, so a service and `postbox relay --http` export the
// same series with the same help:
//
//	m := postboxprom.New(postboxprom.Config{})
//
//	c, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: "billing", Handler: h,
//		OnBatch: m.OnConsumerBatch}) // batch and claim durations
//	m.AddConsumer("billing", c)      // its counters, read at scrape time
//
//	r, err := relay.New(pool, relay.Config{OnBatch: m.OnRelayBatch})
//	m.AddRelay(r)
//
//	prometheus.MustRegister(m, postboxprom.NewDatabase(pool, postboxprom.DatabaseConfig{}))
//
// Metrics of the process (Metrics), per subscriber where it applies:
//
//	postbox_consumer_handled_total            deliveries handled and committed
//	postbox_consumer_failed_total             failed attempts that will be retried
//	postbox_consumer_dead_total               deliveries dead-lettered
//	postbox_consumer_duplicates_total         deliveries dropped as already handled
//	postbox_consumer_batches_total            transactions that handled deliveries
//	postbox_consumer_errors_total             batches that failed as a whole
//	postbox_consumer_claims_total             claim statements, and
//	postbox_consumer_empty_claims_total       those that found nothing
//	postbox_consumer_conflicts_total          claimed partitions another consumer took first
//	postbox_consumer_batch_duration_seconds   histogram: claim to commit
//	postbox_consumer_claim_duration_seconds   histogram: the claim statement; its rise
//	                                          while the backlog stays flat is the first
//	                                          sign of a claim reading dead rows
//	postbox_relay_*                           the relay's counters, last success and
//	                                          batch duration, as `postbox relay --http`
//	                                          exports them
//
// The durations come from OnBatch, which runs when a batch commits, so they
// cover committed batches (an empty claim commits nothing). Counters are the
// consumers' and relays' own Stats, read at scrape time.
//
// Metrics of the database (Database), the binary's /metrics exports too:
// postbox_database_up, postbox_outbox_pending, postbox_outbox_due,
// postbox_relay_lag_seconds, postbox_inbox_depth{subscriber,state},
// postbox_inbox_waiting{subscriber,reason}, postbox_inbox_depth_exact,
// postbox_dead_letters, postbox_inbox_oldest_pending_seconds and
// postbox_inbox_handled_per_minute. They are read through package stats:
// bounded work whatever the backlog, with large counts estimated
// (postbox_inbox_depth_exact is 0 then). They are the same for every
// process on a database: export them from one.
package postboxprom
