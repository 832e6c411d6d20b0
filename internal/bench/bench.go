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
// chooses the pool size, the message shape and the load.
//
// Because it truncates the postbox tables, bench refuses a database whose name
// contains neither "bench" nor "test" unless --force is given.
package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"sort"
	"strings"
)

// workload is one named benchmark.
type workload struct {
	name    string
	summary string
	// flags registers the workload's own flags and returns the function
	// that runs it once they are parsed.
	flags func(fs *flag.FlagSet) func(ctx context.Context, e *env) (result, error)
}

var workloads = []workload{
	{"produce", "P producers, each transaction inserts a business row and publishes one message", produceFlags},
	{"publish-batch", "PublishBatch (COPY) of B messages per transaction", publishBatchFlags},
	{"drain", "N preloaded queue messages through relay and consumer until every effect row is committed", drainFlags},
	{"fanout", "N messages on one topic with S subscribers, until all N×S effects are committed", fanoutFlags},
	{"latency", "open-loop sends at R/s; publish commit to handler start, p50 and p99", latencyFlags},
	{"backlog", "drain rate of fresh messages while N older ones wait in the same inbox", backlogFlags},
	{"idle", "S queues with P consumers each and a relay, no messages: statements, transactions, WAL and CPU a second", idleFlags},
	{"trickle", "R messages a second to one queue with P consumers: statements and CPU per handled message", trickleFlags},
	{"soak", "R messages a second for D: rate, p99 and table sizes every minute, so drift and bloat show", soakFlags},
}

// Run executes one benchmark workload. args are the command-line arguments
// after `postbox bench`: the workload name followed by its flags. The single
// RESULT line is written to stdout, progress to stderr.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return errors.New("bench: name a workload")
		}
		return nil
	}
	var w *workload
	for i := range workloads {
		if workloads[i].name == args[0] {
			w = &workloads[i]
		}
	}
	if w == nil {
		usage(stderr)
		return fmt.Errorf("bench: unknown workload %q", args[0])
	}
	fs := flag.NewFlagSet("postbox bench "+w.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c common
	c.register(fs)
	run := w.flags(fs)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("bench %s: %w", w.name, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("bench %s: unexpected arguments %q", w.name, fs.Args())
	}
	if c.cpuprofile != "" {
		f, err := os.Create(c.cpuprofile)
		if err != nil {
			return fmt.Errorf("bench %s: cpu profile: %w", w.name, err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("bench %s: cpu profile: %w", w.name, err)
		}
		defer pprof.StopCPUProfile()
	}
	e, err := open(ctx, c, stderr)
	if err != nil {
		return fmt.Errorf("bench %s: %w", w.name, err)
	}
	defer e.close()
	res, err := run(ctx, e)
	if err != nil {
		return fmt.Errorf("bench %s: %w", w.name, err)
	}
	res.workload = w.name
	_, err = fmt.Fprintln(stdout, res.String())
	return err
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: postbox bench <workload> [flags]   (postbox bench <workload> -h lists the flags)")
	fmt.Fprintln(w, "workloads:")
	names := make([]string, 0, len(workloads))
	for _, wl := range workloads {
		names = append(names, fmt.Sprintf("  %-14s %s", wl.name, wl.summary))
	}
	sort.Strings(names)
	fmt.Fprintln(w, strings.Join(names, "\n"))
}
