package benchkit

import (
	"context"
	"flag"
	"fmt"
	"time"
)

// VariantRaw names the hand-written SQL baseline of a comparison.
const VariantRaw = "raw"

// Sample is one timed run of one variant.
type Sample struct {
	Seconds float64
	Lat     []time.Duration // per message or transaction, where measured
}

// CompareFlags are the flags of workloads that can run a hand-written SQL
// baseline in the same process: --baseline and --rounds.
type CompareFlags struct {
	subject  string // the variant measured: "postbox", "river"
	baseline string
	rounds   int
}

// Register adds the flags; subject names the variant measured against the
// baseline.
func (c *CompareFlags) Register(fs *flag.FlagSet, subject string) {
	c.subject = subject
	fs.StringVar(&c.baseline, "baseline", "", `"raw": also run the hand-written SQL equivalent in the same run and report the ratio`)
	fs.IntVar(&c.rounds, "rounds", 2, fmt.Sprintf("timed runs of each variant, interleaved (raw, %[1]s, raw, %[1]s, ...); the best run of each is reported", subject))
}

// Variants are the variants to run: the subject, after the baseline if
// there is one.
func (c *CompareFlags) Variants() ([]string, error) {
	switch c.baseline {
	case "":
		return []string{c.subject}, nil
	case VariantRaw:
		return []string{VariantRaw, c.subject}, nil
	}
	return nil, fmt.Errorf("--baseline %q: want raw or nothing", c.baseline)
}

// interleave runs each variant once untimed with warmup messages, then
// --rounds times in ABAB order, calling reset before each run, and returns
// the fastest sample of each variant.
func (c *CompareFlags) interleave(ctx context.Context, e *Env, variants []string, n, warmup int, reset func(context.Context) error,
	run func(ctx context.Context, variant string, n int) (Sample, error)) (map[string]Sample, error) {
	if c.rounds < 1 {
		return nil, fmt.Errorf("--rounds %d: want at least 1", c.rounds)
	}
	best := map[string]Sample{}
	for _, v := range variants {
		if err := reset(ctx); err != nil {
			return nil, err
		}
		if _, err := run(ctx, v, warmup); err != nil {
			return nil, fmt.Errorf("%s warm-up: %w", v, err)
		}
	}
	for r := range c.rounds {
		for _, v := range variants {
			if err := reset(ctx); err != nil {
				return nil, err
			}
			s, err := run(ctx, v, n)
			if err != nil {
				return nil, fmt.Errorf("%s run %d: %w", v, r+1, err)
			}
			e.Logf("%s run %d/%d: %d msgs in %.3fs = %.0f msgs/s", v, r+1, c.rounds, n, s.Seconds, float64(n)/s.Seconds)
			if b, ok := best[v]; !ok || s.Seconds < b.Seconds {
				best[v] = s
			}
		}
	}
	return best, nil
}

// result is the subject's best sample of n messages, with its latency
// percentiles if measured and the baseline's rate if run.
func (c *CompareFlags) result(n int, best map[string]Sample) Result {
	res := Result{Msgs: n, Seconds: best[c.subject].Seconds}
	if lat := best[c.subject].Lat; len(lat) > 0 {
		res.HasLatency = true
		res.P50, res.P99 = Percentiles(lat)
	}
	if raw, ok := best[VariantRaw]; ok && raw.Seconds > 0 {
		res.Baseline = float64(n) / raw.Seconds
	}
	return res
}

// Compare runs each variant once untimed with warmup messages, then
// --rounds times in ABAB order, calling reset before each run, and reports
// the subject's fastest run of n messages: its latency percentiles if
// measured, and the baseline's fastest rate if it ran.
func (c *CompareFlags) Compare(ctx context.Context, e *Env, n, warmup int, reset func(context.Context) error,
	run func(ctx context.Context, variant string, n int) (Sample, error)) (Result, error) {
	variants, err := c.Variants()
	if err != nil {
		return Result{}, err
	}
	best, err := c.interleave(ctx, e, variants, n, warmup, reset, run)
	if err != nil {
		return Result{}, err
	}
	return c.result(n, best), nil
}
