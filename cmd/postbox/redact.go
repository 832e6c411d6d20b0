package main

import (
	"net/url"
	"strings"
)

// The environment variables whose passwords are registered with the
// redactor before the command line is even parsed.
var secretEnv = struct{ urls, plain []string }{
	urls:  []string{"POSTBOX_DATABASE_URL", "DATABASE_URL"},
	plain: []string{"PGPASSWORD", envAdminToken, envAdminPassword},
}

// registerSecrets tells the stderr redactor every password in sight before
// anything is printed: those of the database URLs in the environment (any
// form), PGPASSWORD, the admin credentials, and the value of every
// --database-url on the command line, even one the command never reaches.
func (c *cli) registerSecrets(args []string) {
	for _, env := range secretEnv.urls {
		c.stderr.addURL(c.getenv(env))
	}
	for _, env := range secretEnv.plain {
		c.stderr.add(c.getenv(env))
	}
	for i, a := range args {
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "database-url" {
			continue
		}
		if !hasValue && i+1 < len(args) {
			value = args[i+1]
		}
		c.stderr.addURL(value)
	}
}

// connPasswords returns the passwords a connection string carries, in every
// form PostgreSQL accepts, each as written and as decoded: a URL's
// user:password@ and ?password= (percent-encoded or not), and a keyword/value
// string's password=... (with or without spaces around '=', quoted with
// backslash escapes or not). The string need not be valid.
func connPasswords(dsn string) []string {
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
