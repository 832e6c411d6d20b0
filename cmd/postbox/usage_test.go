package main

import (
	"strings"
	"testing"
)

func TestUsageMistakesExit2(t *testing.T) {
	t.Parallel()
	// A database URL that is never reached: every case fails before
	// connecting.
	db := []string{"POSTBOX_DATABASE_URL=postgres://postgres@127.0.0.1:1/none"}
	for _, tc := range []struct {
		args []string
		env  []string
		want string // in stderr
	}{
		{nil, nil, "no command given"},
		{[]string{"frobnicate"}, nil, `unknown command "frobnicate"`},
		{[]string{"relay", "--bogus"}, db, "flag provided but not defined: -bogus"},
		{[]string{"relay", "--batch-size", "many"}, db, "invalid value"},
		{[]string{"relay", "--batch-size", "0"}, db, "--batch-size 0"},
		{[]string{"relay", "--http", "nonsense"}, db, "--http"},
		{[]string{"relay", "--log-format", "xml"}, db, "--log-format"},
		{[]string{"relay", "extra"}, db, `unexpected argument "extra"`},
		{[]string{"stats"}, nil, "no database: pass --database-url"},
		{[]string{"stats", "--database-url", "postgres://u:p@ss@127.0.0.1:1/x"}, nil, "percent-encode it as %40"},
		{[]string{"migrate"}, db, "want one of up, down, status"},
		{[]string{"migrate", "sideways"}, db, `unknown action "sideways"`},
		{[]string{"migrate", "down"}, db, "pass --yes"},
		{[]string{"dlq"}, db, "want a subcommand"},
		{[]string{"dlq", "frob"}, db, `unknown subcommand "frob"`},
		{[]string{"dlq", "replay"}, db, "--subscriber is required"},
		{[]string{"dlq", "purge", "--dry-run"}, db, "--subscriber is required"},
		{[]string{"dlq", "replay", "--subscriber", "Bad Name"}, db, "postbox: invalid --subscriber"},
		{[]string{"dlq", "list", "--since", "banana"}, db, `--since "banana"`},
		{[]string{"dlq", "list", "--id", "not-a-uuid"}, db, "not a message ID"},
		{[]string{"dlq", "list", "--limit", "0"}, db, "--limit 0"},
		{[]string{"dlq", "show"}, db, "give at least one message ID"},
		{[]string{"subscribe", "--subscriber", "billing"}, db, "--topic is required"},
		{[]string{"subscribe", "--topic", "order.created"}, db, "--subscriber is required"},
		{[]string{"subscribe", "--subscriber", "billing", "--topic", "order..x"}, db, "postbox: invalid pattern"},
		{[]string{"unsubscribe", "--subscriber", "billing"}, db, "--topic is required"},
		{[]string{"queue"}, db, "want a subcommand: declare"},
		{[]string{"queue", "declare"}, db, "want one queue NAME"},
		{[]string{"queue", "declare", "Orders!"}, db, "postbox: invalid NAME"},
		{[]string{"bench"}, db, "name a workload"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			res := run(t, tc.env, tc.args...)
			if res.code != 2 {
				t.Errorf("postbox %s: exit %d, want 2\nstderr: %s", strings.Join(tc.args, " "), res.code, res.stderr)
				return
			}
			if !strings.Contains(res.stderr, tc.want) || !strings.Contains(res.stderr, "usage: postbox") {
				t.Errorf("postbox %s: stderr lacks %q or a usage message:\n%s", strings.Join(tc.args, " "), tc.want, res.stderr)
			}
			if first, _, _ := strings.Cut(res.stderr, "\n"); !strings.HasPrefix(first, "postbox: ") || strings.Count(first, "postbox:") != 1 {
				t.Errorf("postbox %s: first line %q, want one \"postbox: \" prefix", strings.Join(tc.args, " "), first)
			}
			if res.stdout != "" {
				t.Errorf("postbox %s: wrote to stdout: %s", strings.Join(tc.args, " "), res.stdout)
			}
		})
	}
}

func TestHelpExits0(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string // in stdout
	}{
		{[]string{"--help"}, "usage: postbox COMMAND"},
		{[]string{"-h"}, "usage: postbox COMMAND"},
		{[]string{"help"}, "usage: postbox COMMAND"},
		{[]string{"help", "stats"}, "usage: postbox stats"},
		{[]string{"relay", "--help"}, "--poll-interval"},
		{[]string{"migrate", "-h"}, "usage: postbox migrate up|down|status"},
		{[]string{"stats", "--help"}, "--json"},
		{[]string{"dlq", "--help"}, "usage: postbox dlq list|show|replay|purge"},
		{[]string{"dlq", "list", "--help"}, "--since"},
		{[]string{"dlq", "show", "--help"}, "usage: postbox dlq show"},
		{[]string{"dlq", "replay", "--help"}, "--dry-run"},
		{[]string{"dlq", "purge", "--help"}, "--dry-run"},
		{[]string{"queues", "--help"}, "usage: postbox queues"},
		{[]string{"queue", "--help"}, "declare"},
		{[]string{"queue", "declare", "--help"}, "--max-attempts"},
		{[]string{"subscribe", "--help"}, "--filter"},
		{[]string{"unsubscribe", "--help"}, "--topic"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			res := run(t, nil, tc.args...)
			if res.code != 0 || !strings.Contains(res.stdout, tc.want) || res.stderr != "" {
				t.Errorf("postbox %s: exit %d, want 0 with %q on stdout and nothing on stderr\nstdout: %s\nstderr: %s",
					strings.Join(tc.args, " "), res.code, tc.want, res.stdout, res.stderr)
			}
		})
	}
}

// bench prints its own usage, on stderr.
func TestBenchIsWired(t *testing.T) {
	t.Parallel()
	res := run(t, nil, "bench", "--help")
	if res.code != 0 || !strings.Contains(res.stderr, "usage: postbox bench") {
		t.Errorf("postbox bench --help: exit %d, want 0 with the bench usage\nstderr: %s", res.code, res.stderr)
	}
}

func TestPasswordsAreNeverPrinted(t *testing.T) {
	t.Parallel()
	const secret = "Sup3r-s3cret"
	for _, tc := range []struct {
		name string
		env  []string
		args []string
	}{
		{"unreachable server", nil, []string{"stats", "--database-url", "postgres://postgres:" + secret + "@127.0.0.1:1/postbox"}},
		{"url pgx rejects", nil, []string{"stats", "--database-url", "postgres://postgres:" + secret + "@127.0.0.1:1/postbox?sslmode=bogus"}},
		{"keyword form", nil, []string{"dlq", "list", "--database-url", "host=127.0.0.1 port=1 user=postgres password=" + secret}},
		{"from the environment", []string{"DATABASE_URL=postgres://u:" + secret + "@127.0.0.1:1/x?connect_timeout=nope"}, []string{"relay"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := run(t, tc.env, tc.args...)
			if res.code != 1 {
				t.Errorf("%s: exit %d, want 1\nstderr: %s", tc.name, res.code, res.stderr)
			}
			if strings.Contains(res.stderr+res.stdout, secret) {
				t.Errorf("%s: the password was printed:\n%s", tc.name, res.stderr)
			}
			if !strings.Contains(res.stderr, "postbox: ") {
				t.Errorf("%s: no error message:\n%s", tc.name, res.stderr)
			}
		})
	}
}
