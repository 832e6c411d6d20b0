// Package integration holds postbox's acceptance tests: the contract of the
// design guide checked end to end against a real PostgreSQL, never a mock.
//
// Each test runs in parallel on a database of its own from internal/pgtest
// and drives the public packages the way a service does — outbox to publish,
// dispatcher to route, relay to move, schema to migrate — then checks the
// rows that result:
//
//   - atomic publish: a rolled-back transaction's messages are never delivered;
//   - routing: one delivery per queue send, one per matching subscription
//     (exact, wildcard and filtered);
//   - per-key order and exactly-once fan-out with four relays running while
//     producers still publish;
//   - no loss and no duplicate when a relay's connection is killed mid-batch;
//   - delayed delivery (DeliverAt): waiting in postbox.queue_depths until due;
//   - no-route dead letters for sends to undeclared queues, and outbox rows
//     the relay cannot move quarantined as dead letters of dlq.Relay, both
//     replayable;
//   - invalid input rejected with postbox.ErrInvalid before anything is written;
//   - migrations up, down and up again on a database holding data (from
//     version 1, with pending and dead deliveries), and concurrent
//     migrations.
//
// Where a test asks what is pending, it asks postbox.queue_depths (through
// pgtest.Depths): the inbox is a stream, and its rows stay after they are
// handled.
//
// Run them with
//
//	go test -race ./integration/
//
// The package holds no code besides its tests.
package integration
