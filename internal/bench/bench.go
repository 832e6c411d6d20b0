// Package bench runs the named postbox workloads used to measure the library
// against plain SQL and against other job queues. It is the implementation of
// `postbox bench`; docs/benchmarks.md says what each workload does and what
// was measured.
//
//	postbox bench produce --n 20000 --producers 8 --baseline raw
//	postbox bench publish-batch --n 100000 --batch 10000 --baseline raw
//	postbox bench drain --n 100000
//	postbox bench fanout --n 20000 --subscribers 10
//	postbox bench latency --rate 1000 --duration 20s
//	postbox bench backlog --n 1000000
//
// Every workload migrates the database first, empties the postbox tables and
// its own tables (schema postbox_bench), and ends with exactly one line on
// stdout:
//
//	RESULT workload=<name> msgs=<n> seconds=<s> rate=<msgs/s> [p50_ms=<x> p99_ms=<y>] [baseline_rate=<r> ratio=<rate/baseline_rate>]
//
// Progress goes to stderr. The library runs with its defaults: the bench only
// chooses the pool size, the message shape and the load. What it shares
// with the River peers (bench/peers), so that both measure the same way,
// is package benchkit: the common flags, the RESULT line, the loads, the
// order message.
//
// Because it truncates the postbox tables, bench refuses a database whose name
// contains neither "bench" nor "test" unless --force is given.
package bench

import (
	"context"
	"io"

	"github.com/postbox-dev/postbox/internal/benchkit"
)

// result is what a workload reports: one RESULT line.
type result = benchkit.Result

var workloads = []benchkit.Workload[*env]{
	{Name: "produce", Summary: "P producers, each transaction inserts a business row and publishes one message", Flags: produceFlags},
	{Name: "publish-batch", Summary: "PublishBatch (COPY) of B messages per transaction", Flags: publishBatchFlags},
	{Name: "drain", Summary: "N preloaded queue messages through relay and consumer until every effect row is committed", Flags: drainFlags},
	{Name: "fanout", Summary: "N messages on one topic with S subscribers, until all N×S effects are committed", Flags: fanoutFlags},
	{Name: "latency", Summary: "open-loop sends at R/s; publish commit to handler start, p50 and p99", Flags: latencyFlags},
	{Name: "backlog", Summary: "drain rate of fresh messages while N older ones wait in the same inbox", Flags: backlogFlags},
	{Name: "idle", Summary: "S queues with P consumers each and a relay, no messages: statements, transactions, WAL and CPU a second", Flags: idleFlags},
	{Name: "trickle", Summary: "R messages a second to one queue with P consumers: statements and CPU per handled message", Flags: trickleFlags},
	{Name: "soak", Summary: "R messages a second for D: rate, p99 and table sizes every minute, so drift and bloat show", Flags: soakFlags},
}

var program = &benchkit.Program[*env]{
	Name:      "postbox bench",
	Prefix:    "bench",
	Truncates: "the postbox tables",
	Workloads: workloads,
	Setup:     setup,
}

// Run executes one benchmark workload. args are the command-line arguments
// after `postbox bench`: the workload name followed by its flags. The single
// RESULT line is written to stdout, progress to stderr.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return program.Run(ctx, args, stdout, stderr)
}
