package redact

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
			got := Passwords(tc.dsn)
			for _, s := range tc.secrets {
				if !slices.Contains(got, s) {
					t.Errorf("Passwords(%q) = %q, lacks %q", tc.dsn, got, s)
				}
			}
		})
	}
	for _, none := range []string{"", "postgres://app@db/x", "host=db user=app", "postgres://db/x?sslmode=disable"} {
		if got := Passwords(none); len(got) != 0 {
			t.Errorf("Passwords(%q) = %q, want none", none, got)
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
			r := NewWriter(&out)
			r.AddURL(tc.dsn)
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

func TestRedactor(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	r := NewWriter(&out)
	r.AddURL("postgres://app:p%40ss:word@db:5432/x")
	r.AddURL("host=db user=app password='kw-secret' dbname=x")
	r.Write([]byte("a p@ss:word b p%40ss:word c kw-secret d\n"))
	if got := out.String(); strings.Contains(got, "ss:word") || strings.Contains(got, "kw-secret") || !strings.Contains(got, "a xxxxx b xxxxx c xxxxx d") {
		t.Errorf("redacted: %q", got)
	}
}

func TestAddFlagURLs(t *testing.T) {
	t.Parallel()
	const dsn = "postgres://app@db/x?password=Sup3r-s3cret"
	for _, tc := range []struct {
		name   string
		args   []string
		masked bool
	}{
		{"--name value", []string{"drain", "--database-url", dsn, "--n", "1"}, true},
		{"-name value", []string{"-database-url", dsn}, true},
		{"--name=value", []string{"--database-url=" + dsn}, true},
		{"-name=value", []string{"-database-url=" + dsn}, true},
		{"another flag", []string{"--database-urls", dsn}, false},
		{"a positional argument", []string{"database-url", dsn}, false},
		{"no value", []string{"--database-url"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var out bytes.Buffer
			r := NewWriter(&out)
			r.AddFlagURLs(tc.args, "database-url")
			fmt.Fprint(r, "Sup3r-s3cret")
			if got := out.String() == "xxxxx"; got != tc.masked {
				t.Errorf("AddFlagURLs(%q): printed %q", tc.args, out.String())
			}
		})
	}
}

// To copies the secrets registered so far, not those registered later.
func TestTo(t *testing.T) {
	t.Parallel()
	var stderr, stdout bytes.Buffer
	r := NewWriter(&stderr)
	r.Add("early")
	w := r.To(&stdout)
	r.Add("late")
	fmt.Fprint(w, "early late")
	fmt.Fprint(r, "early late")
	if stdout.String() != "xxxxx late" || stderr.String() != "xxxxx xxxxx" {
		t.Errorf("To: %q, the original: %q", stdout.String(), stderr.String())
	}
}
