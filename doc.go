// Package postbox holds what every part of postbox shares: the Message
// envelope, the standard header names, validation limits, the Permanent
// error marker and JSON helpers.
//
// postbox gives Postgres-backed services reliable messaging without a
// separate broker. Producers write messages with package outbox inside their
// own business transaction; package relay moves committed messages to the
// subscribers that package dispatcher routes them to; package inbox runs
// handlers whose database effects commit exactly once; package dlq lists,
// replays and purges dead letters. Package schema migrates the database.
//
// The guarantees:
//
//  1. Atomic publish: a message exists if and only if the transaction that
//     published it commits.
//  2. No loss: every committed message reaches every matching subscriber,
//     whatever crashes.
//  3. Exactly-once effects: what a handler writes through the transaction it
//     is given commits in the same transaction that marks the message
//     handled; a message ID is handled once per subscriber.
//  4. Per-key order: messages that share a key are handled one at a time, in
//     publish order, by each subscriber.
//  5. Bounded retries: failures are retried with exponential backoff and
//     jitter, then dead-lettered; permanent errors are dead-lettered at once.
//  6. Replayable: dead letters can be listed, replayed and purged from SQL,
//     from the postbox binary and from Go.
package postbox
