// Package relay moves committed messages from postbox.outbox to the inbox
// rows of every subscriber they route to.
//
// A batch is one SQL statement, so payloads never travel through Go: it
// locks the free relay partitions (FOR UPDATE SKIP LOCKED), claims the
// oldest outbox rows of those partitions (SKIP LOCKED), deletes them, and
// inserts one inbox row per (subscriber, message) in outbox order. Being one
// statement, a batch commits whole or not at all: a relay killed mid-batch
// loses and duplicates nothing.
//
//	r, err := relay.New(pool, relay.Config{})
//	go r.Run(ctx) // until ctx ends
//
// Run loops at once while batches come back full and otherwise polls every
// PollInterval. Several relays may run on one database: a key always falls
// in the same relay partition, and a partition is held by one relay
// transaction at a time, so per-key order survives concurrent relays with
// no leases and no leader.
//
// Routing (which subscribers get a message) is declared with package
// dispatcher. Sends to undeclared queues become dead letters with
// last_error 'no-route'; topic messages no subscription matches are counted
// in Stats.Unrouted and dropped.
package relay
