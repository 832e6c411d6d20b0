// Package redact keeps passwords out of what postbox's programs print: a
// Writer replaces every registered secret, in each form output may carry it
// in, before the bytes reach the terminal or a log collector.
//
//	stderr := redact.NewWriter(os.Stderr)
//	stderr.AddURL(os.Getenv("DATABASE_URL"))
//	stderr.AddFlagURLs(os.Args[1:], "database-url")
//	fmt.Fprintln(stderr, err) // "password=xxxxx", never the password
//
// CheckURL refuses, before pgx reads them, the connection URLs no redactor
// can cover: those with a raw '@' that pgx would misread, splitting the
// password and printing part of it.
//
// It is shared by cmd/postbox and the benchmark programs.
package redact

import (
	"encoding/json"
	"io"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Writer writes to an underlying writer with every registered secret
// replaced by "xxxxx". Each Write is redacted whole; slog and fmt write a
// record or a message per call, so a secret is never split across writes.
// It is safe for concurrent use.
type Writer struct {
	mu      sync.Mutex
	w       io.Writer
	secrets []string
}

// NewWriter returns a Writer to w with no secrets registered yet.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// To returns a Writer to w that replaces the secrets registered with r so
// far (and not those registered later).
func (r *Writer) To(w io.Writer) *Writer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return &Writer{w: w, secrets: slices.Clone(r.secrets)}
}

// Add registers a secret, also in the forms output may carry it in:
// URL-escaped, Go-quoted (flag defaults are printed with %q) and
// JSON-escaped (JSON logs).
func (r *Writer) Add(secret string) {
	if secret == "" {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	quoted := strconv.Quote(secret)
	js, _ := json.Marshal(secret)
	for _, s := range []string{secret, url.QueryEscape(secret), url.PathEscape(secret),
		quoted[1 : len(quoted)-1], string(js[1 : len(js)-1])} {
		if s != "" && !slices.Contains(r.secrets, s) {
			r.secrets = append(r.secrets, s)
		}
	}
	// Longest first, so that a secret containing another is replaced whole.
	slices.SortFunc(r.secrets, func(a, b string) int { return len(b) - len(a) })
}

// AddURL registers the passwords of a connection string in every form
// (see Passwords), even one pgx would reject.
func (r *Writer) AddURL(dsn string) {
	for _, p := range Passwords(dsn) {
		r.Add(p)
	}
}

// AddFlagURLs registers, as AddURL does, the value of every flag called
// name on the command line args (-name v, --name v, -name=v, --name=v),
// whether or not the program gets as far as parsing it.
func (r *Writer) AddFlagURLs(args []string, name string) {
	for i, a := range args {
		n, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || n != name {
			continue
		}
		if !hasValue && i+1 < len(args) {
			value = args[i+1]
		}
		r.AddURL(value)
	}
}

func (r *Writer) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.secrets) == 0 {
		return r.w.Write(p)
	}
	s := string(p)
	for _, secret := range r.secrets {
		s = strings.ReplaceAll(s, secret, "xxxxx")
	}
	if _, err := io.WriteString(r.w, s); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Passwords returns the passwords a connection string carries, in every
// form PostgreSQL accepts, each as written and as decoded: a URL's
// user:password@ and ?password= (percent-encoded or not), and a keyword/value
// string's password=... (with or without spaces around '=', quoted with
// backslash escapes or not). The string need not be valid.
func Passwords(dsn string) []string {
	var out []string
	add := func(s ...string) {
		for _, p := range s {
			if p != "" {
				out = append(out, p)
			}
		}
	}
	if scheme, rest, ok := strings.Cut(dsn, "://"); ok && !strings.ContainsAny(scheme, " =") {
		if u, err := url.Parse(dsn); err == nil {
			if u.User != nil {
				if p, ok := u.User.Password(); ok {
					add(p)
				}
			}
			add(u.Query()["password"]...)
		}
		// As written, even where url.Parse gives up: between "user:" and
		// the last '@' of the authority, and each password= of the query.
		authority, query, _ := strings.Cut(rest, "?")
		if end := strings.IndexByte(authority, '/'); end >= 0 && strings.LastIndexByte(authority[:end], '@') >= 0 {
			authority = authority[:end]
		}
		if at := strings.LastIndexByte(authority, '@'); at >= 0 {
			if _, pass, ok := strings.Cut(authority[:at], ":"); ok {
				add(pass)
				if p, err := url.PathUnescape(pass); err == nil {
					add(p)
				}
			}
		}
		query, _, _ = strings.Cut(query, "#")
		for kv := range strings.SplitSeq(query, "&") {
			if k, v, ok := strings.Cut(kv, "="); ok && strings.EqualFold(k, "password") {
				add(v)
				if p, err := url.QueryUnescape(v); err == nil {
					add(p)
				}
			}
		}
		return out
	}
	for _, kv := range keywordPairs(dsn) {
		if kv.key == "password" {
			add(kv.raw, kv.value)
		}
	}
	return out
}

type keywordPair struct {
	key, value string // value decoded
	raw        string // value as written, quotes included
}

// keywordPairs splits a libpq keyword/value connection string:
// keyword = value pairs separated by whitespace, a value either
// single-quoted (” and \' inside) or running to the next whitespace, with
// backslash escapes in both.
func keywordPairs(s string) []keywordPair {
	var pairs []keywordPair
	i := 0
	skip := func() {
		for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r') {
			i++
		}
	}
	for {
		skip()
		start := i
		for i < len(s) && s[i] != '=' && s[i] != ' ' && s[i] != '\t' && s[i] != '\n' {
			i++
		}
		key := strings.ToLower(s[start:i])
		skip()
		if i >= len(s) || s[i] != '=' {
			if i >= len(s) {
				return pairs
			}
			continue // not a pair: move on
		}
		i++ // '='
		skip()
		vstart := i
		var v strings.Builder
		if i < len(s) && s[i] == '\'' {
			i++
			for i < len(s) && s[i] != '\'' {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				v.WriteByte(s[i])
				i++
			}
			if i < len(s) {
				i++ // closing quote
			}
		} else {
			for i < len(s) && s[i] != ' ' && s[i] != '\t' && s[i] != '\n' && s[i] != '\r' {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				v.WriteByte(s[i])
				i++
			}
		}
		pairs = append(pairs, keywordPair{key: key, value: v.String(), raw: s[vstart:i]})
	}
}
