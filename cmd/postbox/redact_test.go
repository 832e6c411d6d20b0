package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
)

// Every form a password takes in a connection string.
var passwordForms = []struct {
	name, dsn string
	secrets   []string // as they may be printed
}{
	{"url user:password@", "postgres://app:Sup3r-s3cret@db:5432/x", []string{"Sup3r-s3cret"}},
	{"url user:password@, percent-encoded", "postgres://app:p%40ss%3Aw0rd@db/x", []string{"p@ss:w0rd", "p%40ss%3Aw0rd"}},
	{"url user:password@ with an @ pgx rejects", "postgres://app:p@ss@db:5432/x?sslmode=bogus", []string{"p@ss"}},
	{"url ?password=", "postgres://app@127.0.0.1:1/x?password=Sup3r-s3cret", []string{"Sup3r-s3cret"}},
	{"url &password=, encoded", "postgres://app@db/x?sslmode=disable&password=s%20cr%26t&application_name=a", []string{"s cr&t", "s%20cr%26t"}},
	{"keyword password=", "host=db user=app password=Sup3r-s3cret dbname=x", []string{"Sup3r-s3cret"}},
	{"keyword password = (spaced)", "host=db user=app password = Sup3r-s3cret dbname=x", []string{"Sup3r-s3cret"}},
	{"keyword password='quoted'", "host=db password='sec ret' user=app", []string{"sec ret", "'sec ret'"}},
	{"keyword password with escapes", `host=db password = 'it\'s \\ here' user=app`, []string{`it's \ here`, `'it\'s \\ here'`}},
	{"keyword password, unquoted with a backslash", `password=a\ b host=db`, []string{"a b", `a\ b`}},
}

func TestConnPasswordsFindsEveryForm(t *testing.T) {
	t.Parallel()
	for _, tc := range passwordForms {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := connPasswords(tc.dsn)
			for _, s := range tc.secrets {
				if !slices.Contains(got, s) {
					t.Errorf("connPasswords(%q) = %q, lacks %q", tc.dsn, got, s)
				}
			}
		})
	}
	for _, none := range []string{"", "postgres://app@db/x", "host=db user=app", "postgres://db/x?sslmode=disable"} {
		if got := connPasswords(none); len(got) != 0 {
			t.Errorf("connPasswords(%q) = %q, want none", none, got)
		}
	}
}

// What the redactor lets through: nothing of a registered password, in
// text, in a flag default (%q) or in a JSON log line.
func TestRedactorMasksEveryForm(t *testing.T) {
	t.Parallel()
	for _, tc := range passwordForms {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var out bytes.Buffer
			r := newRedactor(&out)
			r.addURL(tc.dsn)
			fmt.Fprintf(r, "error: %s\n", tc.dsn)
			fmt.Fprintf(r, "  --database-url (default %q)\n", tc.dsn)
			slog.New(slog.NewJSONHandler(r, nil)).Error("connect failed", "dsn", tc.dsn)
			slog.New(slog.NewTextHandler(r, nil)).Error("connect failed", "dsn", tc.dsn)
			for _, s := range tc.secrets {
				if strings.Contains(out.String(), s) {
					t.Errorf("%q printed:\n%s", s, out.String())
				}
			}
			if !strings.Contains(out.String(), "xxxxx") {
				t.Errorf("nothing masked:\n%s", out.String())
			}
		})
	}
}

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
