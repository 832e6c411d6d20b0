// Package metrics is postbox's one Prometheus implementation: the
// collectors behind the binary's /metrics (`postbox relay --http`) and
// behind contrib/prometheus, the public package services use, so that both
// export the same series with the same help.
//
//   - Database: the database's backlog, read at scrape time through package
//     stats (postbox_database_up, postbox_outbox_*, postbox_inbox_*,
//     postbox_dead_letters, postbox_relay_lag_seconds).
//   - Relays: the counters of the relays of a process (relay.Stats), their
//     last success and the duration of their batches (postbox_relay_*).
//   - Consumers: the counters of the consumers of a process (inbox.Stats)
//     per subscriber, and the durations of their batches and claims
//     (postbox_consumer_*).
//
// Counters are the relays' and consumers' own Stats, read at scrape time;
// durations come from their OnBatch hooks. Metric names and label sets are
// part of postbox's public surface: renaming one is a changelog entry.
package metrics
