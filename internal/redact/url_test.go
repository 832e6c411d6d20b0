package redact

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// CheckURL refuses exactly the URLs pgx reads otherwise than they are
// written (the password pgx finds is not the one meant), and its error
// names no part of them.
func TestCheckURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, dsn string
		password  string   // the one meant
		parts     []string // of the URL, none of which the error may print
		refused   bool
	}{
		{"raw @ in the password", "postgres://u:pa55@Sup3r-s3cret@127.0.0.1:5432/x", "pa55@Sup3r-s3cret", []string{"pa55", "Sup3r-s3cret", "Sup3r", "s3cret"}, true},
		{"two raw @ in the password", "postgres://u:pa55@Sup3r@s3cret@host/x?sslmode=disable", "pa55@Sup3r@s3cret", []string{"pa55", "Sup3r", "s3cret"}, true},
		{"raw @ in the password, postgresql://, no path", "postgresql://u:pa55@Sup3r-s3cret@host", "pa55@Sup3r-s3cret", []string{"pa55", "Sup3r-s3cret"}, true},
		{"raw @ in the user name, then a query", "postgres://me@corp:pa55@host?sslmode=disable", "pa55", []string{"me@corp", "corp", "pa55"}, true},
		{"raw @ in ?password= of a URL without a path", "postgres://host?password=pa55@Sup3r-s3cret", "pa55@Sup3r-s3cret", []string{"pa55", "Sup3r-s3cret"}, true},

		{"percent-encoded @", "postgres://u:pa55%40Sup3r-s3cret@host/x", "pa55@Sup3r-s3cret", nil, false},
		{"raw @ in the query", "postgres://u:pw@host/x?application_name=a@b", "pw", nil, false},
		{"raw @ in the query, no path", "postgres://u:pw@host?application_name=a@b", "pw", nil, false},
		{"raw @ in the database name", "postgres://u:pw@host/db@x", "pw", nil, false},
		{"raw ? in the password", "postgres://u:pa?ss@host/x", "pa?ss", nil, false},
		{"several hosts", "postgres://u:pw@h1:5432,h2:5433/x", "pw", nil, false},
		{"no user-info", "postgres://host/x?password=pw", "pw", nil, false},
		{"keyword/value with @", "host=h user=u password=pa55@Sup3r", "pa55@Sup3r", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := CheckURL(tc.dsn)
			if got := err != nil; got != tc.refused {
				t.Fatalf("CheckURL(%q) = %v, want refused %v", tc.dsn, err, tc.refused)
			}
			// The reason: pgx's reading of the URL.
			read := ""
			cfg, perr := pgconn.ParseConfig(tc.dsn)
			if perr == nil {
				read = cfg.Password
			}
			if misread := read != tc.password; misread != tc.refused {
				t.Errorf("pgx reads the password of %q as %q (err %v): misread %v, refused %v", tc.dsn, read, perr, misread, tc.refused)
			}
			if err == nil {
				return
			}
			if !strings.Contains(err.Error(), "percent-encode it as %40") {
				t.Errorf("error %q does not say how to fix the URL", err)
			}
			for _, p := range tc.parts {
				if strings.Contains(err.Error(), p) {
					t.Errorf("error %q holds %q of the URL", err, p)
				}
			}
		})
	}
}
