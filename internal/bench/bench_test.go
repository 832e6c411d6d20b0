package bench_test

import (
	"bytes"
	"context"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox/internal/bench"
	"github.com/postbox-dev/postbox/internal/pgtest"
)

var resultLine = regexp.MustCompile(`^RESULT workload=([a-z-]+) msgs=([0-9]+) seconds=[0-9]+\.[0-9]{3} rate=[0-9]+\.[0-9]` +
	`( p50_ms=[0-9]+\.[0-9]{2} p99_ms=[0-9]+\.[0-9]{2})?` +
	`( baseline_rate=[0-9]+\.[0-9] ratio=[0-9]+\.[0-9]{3})?\n$`)

// TestWorkloads runs every workload with tiny numbers on a database of its
// own and checks the RESULT line: its format, the workload, the message
// count, and which optional fields appear. Timings are not asserted.
func TestWorkloads(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args              []string
		msgs              string
		latency, baseline bool
	}{
		{[]string{"produce", "--n", "200", "--producers", "4", "--baseline", "raw"}, "200", true, true},
		{[]string{"produce", "--n", "50", "--producers", "2", "--rounds", "1"}, "50", true, false},
		{[]string{"publish-batch", "--n", "1000", "--batch", "300", "--baseline", "raw"}, "1000", false, true},
		{[]string{"drain", "--n", "500", "--keys", "7"}, "500", false, false},
		{[]string{"fanout", "--n", "100", "--subscribers", "3"}, "300", false, false},
		{[]string{"backlog", "--n", "2000", "--fresh", "300"}, "300", false, false},
		{[]string{"backlog", "--n", "500", "--fresh", "100", "--waiting", "other"}, "100", false, false},
		{[]string{"latency", "--rate", "100", "--duration", "1s", "--publishers", "4"}, "100", true, false},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, "_"), func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			var stdout, stderr bytes.Buffer
			args := append(tc.args, "--database-url", pgtest.URL(t), "--progress", "0")
			if err := bench.Run(ctx, args, &stdout, &stderr); err != nil {
				t.Fatalf("Run(%q): %v\nstderr:\n%s", tc.args, err, stderr.String())
			}
			m := resultLine.FindStringSubmatch(stdout.String())
			if m == nil {
				t.Fatalf("stdout is not one RESULT line:\n%q", stdout.String())
			}
			if m[1] != tc.args[0] {
				t.Errorf("workload=%s, want %s", m[1], tc.args[0])
			}
			if m[2] != tc.msgs {
				t.Errorf("msgs=%s, want %s", m[2], tc.msgs)
			}
			if got := m[3] != ""; got != tc.latency {
				t.Errorf("p50/p99 present: %v, want %v", got, tc.latency)
			}
			if got := m[4] != ""; got != tc.baseline {
				t.Errorf("baseline present: %v, want %v", got, tc.baseline)
			}
		})
	}
}

func TestRunRejects(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.URL(t)
	for _, args := range [][]string{
		nil,
		{"no-such-workload"},
		{"produce", "--no-such-flag"},
		{"produce", "--baseline", "river", "--database-url", url},
		{"drain", "--n", "0", "--database-url", url},
		{"backlog", "--waiting", "nowhere", "--database-url", url},
		{"drain", "--database-url", ""},
	} {
		var stdout, stderr bytes.Buffer
		if err := bench.Run(ctx, args, &stdout, &stderr); err == nil {
			t.Errorf("Run(%q) = nil, want an error", args)
		}
		if stdout.Len() != 0 {
			t.Errorf("Run(%q) wrote to stdout: %q", args, stdout.String())
		}
	}
}

// TestRefusesOtherDatabases: bench truncates the postbox tables, so a
// database not named for benchmarks or tests is refused without --force,
// before anything is written to it.
func TestRefusesOtherDatabases(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	cfg, err := pgx.ParseConfig(pgtest.URL(t))
	if err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("postbox_prod_%d", time.Now().UnixNano())
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		admin.Close(ctx)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		defer admin.Close(context.Background())
		if _, err := admin.Exec(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop %s: %v", name, err)
		}
	})
	url := fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=%s sslmode=disable",
		cfg.Host, cfg.Port, cfg.User, cfg.Password, name)
	var stdout, stderr bytes.Buffer
	err = bench.Run(ctx, []string{"drain", "--n", "1", "--database-url", url}, &stdout, &stderr)
	if err == nil || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("Run on %s = %v, want a refusal naming --force", name, err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var migrated bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'postbox')").Scan(&migrated); err != nil {
		t.Fatal(err)
	}
	if migrated {
		t.Errorf("the refused database was migrated")
	}
}
