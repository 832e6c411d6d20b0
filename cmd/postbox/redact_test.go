package main

import (
	"strings"
	"testing"
)

// The binary, end to end: each form in the environment or on the command
// line, through help, errors and logs.
func TestPasswordsAreNeverPrintedInAnyForm(t *testing.T) {
	t.Parallel()
	const secret = "Sup3r-s3cret"
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		code int
	}{
		{"bench -h, url ?password= in DATABASE_URL", []string{"DATABASE_URL=postgres://u@127.0.0.1:1/x?password=" + secret}, []string{"bench", "drain", "-h"}, 0},
		{"bench -h, keyword form in DATABASE_URL", []string{"DATABASE_URL=host=127.0.0.1 port=1 user=u password = '" + secret + "'"}, []string{"bench", "drain", "-h"}, 0},
		{"bench -h, user:password@ in DATABASE_URL", []string{"DATABASE_URL=postgres://u:" + secret + "@127.0.0.1:1/x"}, []string{"bench", "produce", "--help"}, 0},
		{"bench without a workload", []string{"DATABASE_URL=postgres://u@127.0.0.1:1/x?password=" + secret}, []string{"bench"}, 2},
		{"bench run, url ?password= on the command line", nil, []string{"bench", "drain", "--database-url", "postgres://u@127.0.0.1:1/x?password=" + secret, "--progress", "0"}, 1},
		{"stats, url ?password=", nil, []string{"stats", "--database-url", "postgres://postgres@127.0.0.1:1/x?password=" + secret}, 1},
		{"stats, url ?password= pgx rejects", nil, []string{"stats", "--database-url=postgres://postgres@127.0.0.1:1/x?password=" + secret + "&sslmode=bogus"}, 1},
		{"dlq, keyword form with spaces", nil, []string{"dlq", "list", "--database-url", "host=127.0.0.1 port=1 user=postgres password = " + secret}, 1},
		{"doctor, quoted keyword form", []string{"POSTBOX_DATABASE_URL=host=127.0.0.1 port=1 password='" + secret + "' user=x"}, []string{"doctor"}, 1},
		{"relay, JSON logs, PGPASSWORD", []string{"PGPASSWORD=" + secret, "POSTBOX_DATABASE_URL=postgres://u@127.0.0.1:1/x?connect_timeout=nope"}, []string{"relay", "--log-format", "json"}, 1},
		{"admin, a token in the environment", []string{"POSTBOX_ADMIN_TOKEN=" + secret, "POSTBOX_DATABASE_URL=postgres://u@127.0.0.1:1/x"}, []string{"admin", "--http", "0.0.0.0:0", "--log-format", "json"}, 1},
		{"usage error after a database url", nil, []string{"stats", "--database-url", "postgres://u@h/x?password=" + secret, "--bogus"}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			res := run(t, tc.env, tc.args...)
			if res.code != tc.code {
				t.Errorf("exit %d, want %d\nstdout: %s\nstderr: %s", res.code, tc.code, res.stdout, res.stderr)
			}
			if strings.Contains(res.stdout+res.stderr, secret) {
				t.Errorf("the password was printed:\nstdout: %s\nstderr: %s", res.stdout, res.stderr)
			}
		})
	}
}

// pgx ends a URL's password at its first '@' and reads the rest as the
// host, which its connection errors print: every command, bench included,
// refuses such a URL before pgx reads it, as a usage mistake, and prints no
// part of the password.
func TestRawAtInAPasswordIsRefused(t *testing.T) {
	t.Parallel()
	const url = "postgres://u:pa55@Sup3r-s3cret@127.0.0.1:1/x"
	for _, tc := range []struct {
		name string
		env  []string
		args []string
	}{
		{"stats, --database-url", nil, []string{"stats", "--database-url", url}},
		{"relay, POSTBOX_DATABASE_URL", []string{"POSTBOX_DATABASE_URL=" + url}, []string{"relay"}},
		{"dlq list, DATABASE_URL", []string{"DATABASE_URL=" + url}, []string{"dlq", "list"}},
		{"bench, --database-url", nil, []string{"bench", "drain", "--database-url=" + url, "--progress", "0"}},
		{"bench, DATABASE_URL", []string{"DATABASE_URL=" + url}, []string{"bench", "drain"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			res := run(t, tc.env, tc.args...)
			if res.code != 2 || !strings.Contains(res.stderr, "percent-encode it as %40") {
				t.Errorf("exit %d, want 2 with the fix in stderr\nstdout: %s\nstderr: %s", res.code, res.stdout, res.stderr)
			}
			for _, part := range []string{"pa55", "Sup3r", "s3cret"} {
				if strings.Contains(res.stdout+res.stderr, part) {
					t.Errorf("%q of the password was printed:\nstdout: %s\nstderr: %s", part, res.stdout, res.stderr)
				}
			}
		})
	}
}
