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
