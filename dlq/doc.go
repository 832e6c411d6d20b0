// Package dlq lists, inspects, replays and purges dead letters.
//
// A dead letter is a row of the table postbox.dead_letters: a delivery that
// exhausted its subscriber's attempts, that a handler rejected as
// permanently invalid (postbox.Permanent), a send to a queue that did not
// exist when the relay moved it (LastError "no-route", Subscriber the queue
// name), or an outbox row the relay could not move (Subscriber Relay,
// "_relay"). Dead letters stay until they are replayed or purged.
//
// Every function takes a postbox.DBTX, so it runs on a pool, a connection or
// the caller's transaction (and then commits or rolls back with it).
//
//	letters, err := dlq.List(ctx, pool, dlq.Filter{
//		Subscriber:    "inventory",
//		ErrorContains: "timeout",
//		Since:         time.Now().Add(-time.Hour),
//	})
//	...
//	n, err := dlq.Count(ctx, pool, dlq.Filter{Subscriber: "inventory", Type: "order.created.v1"}) // dry run of Replay
//	n, err = dlq.Replay(ctx, pool, dlq.Filter{Subscriber: "inventory", Type: "order.created.v1"})
//	n, err = dlq.Purge(ctx, pool, dlq.Filter{Subscriber: "inventory", IDs: []uuid.UUID{id}})
//	d, err := dlq.Get(ctx, pool, "inventory", id) // errors.Is(err, dlq.ErrNotFound) once replayed
//
// # Guarantees
//
//   - Replay and Purge run the SQL functions postbox.replay_dead_letters and
//     postbox.purge_dead_letters: Go and psql select and change rows the
//     same way. Count is what a Replay with the same Filter would replay at
//     that moment (postbox.replayable_dead_letters), CountPurge what a Purge
//     would delete.
//   - A replayed letter is pending again at once, with attempts 0, replay
//     count one higher, headers x-replayed-at (UTC, RFC 3339) and
//     x-replay-count (the new replay count), and one row in postbox.replays
//     recording its attempts and last error. Its message ID is unchanged.
//   - Replay keeps a key's order: letters are replayed in their original
//     order, each is handled after its key's earlier pending messages and
//     before its later ones, and a letter whose key has an earlier dead
//     letter that the Filter leaves behind is not replayed (Count says how
//     many will be). With dispatcher.KeyParks, a key's later messages wait
//     while one of its messages is dead, until it is replayed or purged.
//   - Each call is one statement: all or nothing. Concurrent replays of the
//     same letters replay each letter once.
//   - Each call touches at most Filter.Limit letters (default 100, at most
//     10000): List and Purge take the oldest dead first, Replay the earliest
//     published first, so transactions and results stay bounded;
//     call again until the result is zero to go through more, with Until
//     fixed at the start so letters that die again meanwhile are left alone.
//   - Filters are validated before anything runs (errors match
//     postbox.ErrInvalid); ErrorContains is matched literally, never as a
//     pattern, and no SQL is ever built from input.
//
// A no-route letter (a send to an undeclared queue, or one no routing rule
// of its router matched) and a letter of Relay never reached a stream:
// replayed, they go back into the outbox as the messages they were, and
// the relay routes them anew: to the queue declared since, through the
// router's rules as they are now, or to the no-route letters again.
//
// # From SQL
//
// The same operations in psql. NULL arguments mean "any"; the functions
// take (subscriber, message_ids, error_like, type_name, dead_since,
// dead_until, max_rows), so use named arguments for the later ones. Unlike
// Filter.ErrorContains, error_like is a LIKE pattern, and max_rows NULL means
// no limit.
//
//	-- list and inspect
//	SELECT subscriber, message_id, type, attempts, last_error, dead_at
//	FROM postbox.dead_letters
//	WHERE subscriber = 'inventory' AND last_error LIKE '%timeout%'
//	ORDER BY dead_at;
//
//	SELECT subscriber, count(*) FROM postbox.dead_letters GROUP BY subscriber;
//
//	-- dry runs: what a replay would replay, what a purge would delete
//	SELECT count(*) FROM postbox.replayable_dead_letters('inventory', type_name => 'order.created.v1');
//	SELECT count(*) FROM postbox.select_dead_letters('inventory', type_name => 'order.created.v1');
//
//	-- replay all of a subscriber's dead letters, or some of them
//	SELECT postbox.replay_dead_letters('inventory');
//	SELECT postbox.replay_dead_letters('inventory', ARRAY['0190c3e4-...']::uuid[]);
//	SELECT postbox.replay_dead_letters('inventory', error_like => '%timeout%');
//	SELECT postbox.replay_dead_letters('inventory', type_name => 'order.created.v1',
//	       dead_since => now() - interval '1 hour', max_rows => 500);
//
//	-- what was replayed
//	SELECT * FROM postbox.replays WHERE subscriber = 'inventory' ORDER BY replayed_at DESC;
//
//	-- purge
//	SELECT postbox.purge_dead_letters('inventory', error_like => 'no-route');
//	SELECT postbox.purge_dead_letters('inventory', dead_until => now() - interval '30 days');
package dlq
