// Package stats reads what operators and dashboards want to know about a
// postbox database — per subscriber the deliveries ready, waiting and dead,
// how old the oldest pending one is (lag), how many were handled per minute,
// the keys whose head is failing; the outbox backlog — in bounded time
// whatever the backlog.
//
//	ov, err := stats.Read(ctx, pool)
//	if err != nil { ... }
//	for _, s := range ov.Subscribers {
//		fmt.Println(s.Name, s.Ready, s.Waiting, s.Dead, s.Lag)
//	}
//	keys, err := stats.BlockedKeys(ctx, pool, "inventory", 20)
//
// `postbox stats`, the binary's /metrics, its admin page and
// contrib/prometheus read through this package, so a service can show the
// same figures.
//
// # Bounded, and what is exact
//
// No statement reads a whole table: a scrape of a 10M-row backlog costs what
// a scrape of an empty one costs (tests check the buffers each statement
// touches against a large backlog written straight into the tables). The
// price is that large figures are estimates, and each [Count] says which:
//
//   - Ready, Waiting (InBackoff, Delayed, Blocked) and Dead are exact up to
//     Options.Cap rows per subscriber and source (the stream, parked
//     deliveries, dead letters). Past the cap, a stream count is
//     extrapolated from the first rows past each cursor over the order
//     partition's seq range, and parked and dead counts are the planner's
//     estimate (pg_class.reltuples times the name's frequency in pg_stats),
//     never less than the cap. Count.Exact is false then.
//   - Lag (OldestPending) is exact for the stream: per order partition, seq
//     order is the relay's commit order, so the first row past each cursor is
//     the oldest. Parked deliveries add theirs exactly while they number
//     fewer than the cap (LagExact).
//   - HandledPerMinute counts postbox.processed rows of the last
//     Options.RateWindow through its BRIN index; past Options.RateCap rows it
//     is a lower bound (HandledExact false).
//   - The outbox backlog is exact up to the cap; past it, it is estimated
//     from the outbox sequence (last id minus the oldest id, an upper bound).
//     Its oldest message is exact.
//
// Every function takes a postbox.DBTX. One that can begin a transaction (a
// pool, a connection, a pgx.Tx) runs the statements in one transaction, so
// that they share a snapshot and a clock, with planner settings that keep
// them on their index paths; it is rolled back afterwards (nothing is
// written).
package stats
