package benchkit

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// The RESULT line is parsed by docs/benchmarks.md's readers and by scripts:
// its format is fixed.
func TestResultString(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		res  Result
		want string
	}{
		{"rate only", Result{Workload: "drain", Msgs: 1000, Seconds: 0.5},
			"RESULT workload=drain msgs=1000 seconds=0.500 rate=2000.0"},
		{"latency", Result{Workload: "latency", Msgs: 100, Seconds: 1, HasLatency: true, P50: 1500 * time.Microsecond, P99: 12 * time.Millisecond},
			"RESULT workload=latency msgs=100 seconds=1.000 rate=100.0 p50_ms=1.50 p99_ms=12.00"},
		{"baseline", Result{Workload: "produce", Msgs: 300, Seconds: 2, Baseline: 300},
			"RESULT workload=produce msgs=300 seconds=2.000 rate=150.0 baseline_rate=300.0 ratio=0.500"},
		{"everything", Result{Workload: "x", Msgs: 10, Seconds: 1, HasLatency: true, P50: time.Millisecond, P99: 2 * time.Millisecond,
			Baseline: 20, Extra: []string{"a=1", "b=2 c=3"}},
			"RESULT workload=x msgs=10 seconds=1.000 rate=10.0 p50_ms=1.00 p99_ms=2.00 baseline_rate=20.0 ratio=0.500 a=1 b=2 c=3"},
		{"no time", Result{Workload: "idle", Msgs: 0, Seconds: 0},
			"RESULT workload=idle msgs=0 seconds=0.000 rate=0.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := tc.res.String(); got != tc.want {
				t.Errorf("String() =\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

func TestPercentile(t *testing.T) {
	t.Parallel()
	d := make([]time.Duration, 100)
	for i := range d {
		d[i] = time.Duration(100-i) * time.Millisecond // unsorted
	}
	if p50, p99 := Percentiles(d); p50 != 50*time.Millisecond || p99 != 99*time.Millisecond {
		t.Errorf("Percentiles = %v, %v; want 50ms, 99ms", p50, p99)
	}
	if d[0] != 100*time.Millisecond {
		t.Errorf("Percentiles sorted its argument")
	}
	if got := Percentile(nil, 99); got != 0 {
		t.Errorf("Percentile(nil) = %v", got)
	}
	if got := Percentile([]time.Duration{7}, 1); got != 7 {
		t.Errorf("Percentile of one = %v", got)
	}
}

// --database-url has no default: $DATABASE_URL is read after parsing, so
// that -h, which prints every flag's default, cannot print its password.
func TestDatabaseURLHasNoDefault(t *testing.T) {
	t.Parallel()
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	var c common
	c.register(fs, "the tables")
	if def := fs.Lookup("database-url").DefValue; def != "" {
		t.Errorf("--database-url defaults to %q", def)
	}
}

// testProgram has one workload that reports the URL it ran against.
var testProgram = &Program[*Env]{
	Name:      "test-bench",
	Prefix:    "test-bench",
	Truncates: "nothing",
	Workloads: []Workload[*Env]{{Name: "noop", Summary: "nothing", Flags: func(*flag.FlagSet) func(context.Context, *Env) (Result, error) {
		return func(context.Context, *Env) (Result, error) { return Result{Msgs: 1, Seconds: 1}, nil }
	}}},
	Setup: func(_ context.Context, e *Env, _ *pgxpool.Pool) (*Env, error) { return e, nil },
}

// What a benchmark command prints never holds a password: not in its
// usage, not in an error pgx or the program returns.
func TestExecPrintsNoPassword(t *testing.T) {
	t.Parallel()
	const secret = "Sup3r-s3cret"
	// fails prints what it was given, as a careless error would.
	fails := func(_ context.Context, args []string, stdout, stderr io.Writer) error {
		fmt.Fprintln(stdout, args)
		return fmt.Errorf("cannot open %q", args)
	}
	for _, tc := range []struct {
		name string
		env  string // $DATABASE_URL
		args []string
		run  func(ctx context.Context, args []string, stdout, stderr io.Writer) error
		code int
	}{
		{"usage, url in the environment", "postgres://u:" + secret + "@127.0.0.1:1/x", []string{"noop", "-h"}, testProgram.Run, 0},
		{"url ?password= on the command line", "", []string{"noop", "--database-url", "postgres://u@127.0.0.1:1/x?password=" + secret, "--progress", "0"}, testProgram.Run, 1},
		{"url pgx rejects", "", []string{"noop", "--database-url=postgres://u:" + secret + "@127.0.0.1:1/x?sslmode=bogus"}, testProgram.Run, 1},
		{"keyword form", "", []string{"noop", "-database-url", "host=127.0.0.1 port=1 user=u password = '" + secret + "'"}, testProgram.Run, 1},
		// pgx would read "pa55" as the password and print the rest as the host.
		{"url with a raw @ in the password", "", []string{"noop", "--database-url", "postgres://u:pa55@" + secret + "@127.0.0.1:1/x"}, testProgram.Run, 2},
		{"unknown flag", "", []string{"noop", "--bogus"}, testProgram.Run, 2},
		{"a careless error, url from the environment", "host=127.0.0.1 password=" + secret, []string{"noop", "host=127.0.0.1 password=" + secret}, fails, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			getenv := func(k string) string {
				if k == "DATABASE_URL" {
					return tc.env
				}
				return ""
			}
			var stdout, stderr bytes.Buffer
			code := Exec(ctx, tc.args, &stdout, &stderr, getenv, tc.run)
			if code != tc.code {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, stdout.String(), stderr.String())
			}
			if strings.Contains(stdout.String()+stderr.String(), secret) {
				t.Errorf("the password was printed:\nstdout: %s\nstderr: %s", stdout.String(), stderr.String())
			}
		})
	}
}
