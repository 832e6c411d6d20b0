package benchkit

import (
	"fmt"
	"slices"
	"time"
)

// Result is what a workload reports: one RESULT line.
type Result struct {
	Workload string // set by Program.Run
	Msgs     int
	Seconds  float64
	// latency percentiles, when measured
	HasLatency bool
	P50, P99   time.Duration
	// Baseline is the rate of the hand-written baseline measured in the
	// same run, when asked for (0: none).
	Baseline float64
	// Extra are further key=value figures of the workload, in order.
	Extra []string
}

// Rate is messages a second.
func (r Result) Rate() float64 {
	if r.Seconds <= 0 {
		return 0
	}
	return float64(r.Msgs) / r.Seconds
}

// String formats the RESULT line. Its format is what docs/benchmarks.md
// and the scripts that read results parse: change it nowhere else.
func (r Result) String() string {
	s := fmt.Sprintf("RESULT workload=%s msgs=%d seconds=%.3f rate=%.1f", r.Workload, r.Msgs, r.Seconds, r.Rate())
	if r.HasLatency {
		s += fmt.Sprintf(" p50_ms=%.2f p99_ms=%.2f", Millis(r.P50), Millis(r.P99))
	}
	if r.Baseline > 0 {
		s += fmt.Sprintf(" baseline_rate=%.1f ratio=%.3f", r.Baseline, r.Rate()/r.Baseline)
	}
	for _, x := range r.Extra {
		s += " " + x
	}
	return s
}

// Millis is d in milliseconds.
func Millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Percentile returns the p-th percentile (0 < p <= 100) of sorted by the
// nearest-rank method; 0 for none.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted)) + 0.999999999)
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// Percentiles returns the 50th and 99th percentiles of d, which it leaves
// as it was.
func Percentiles(d []time.Duration) (p50, p99 time.Duration) {
	s := slices.Clone(d)
	slices.Sort(s)
	return Percentile(s, 50), Percentile(s, 99)
}
