package redact

import (
	"errors"
	"strings"
)

// CheckURL's errors, to be prefixed with what the URL is ("database url: ").
// They hold nothing of it.
var (
	errRawAt = errors.New("the user name or password holds a raw '@', which pgx would take for the end " +
		"of the password (and print the rest as the host): percent-encode it as %40")
	errQueryAt = errors.New("the query holds a raw '@' and the URL has no path, so pgx would read all " +
		"before the '@' as the user name (and print it): percent-encode it as %40")
)

// CheckURL returns an error for a connection URL that pgx would read
// otherwise than it is written, so that the redactor could not mask its
// password: pgx (as libpq) ends the user-info at the first '@' before the
// path, so of postgres://u:p@ss@host/x the password is "p" and the host
// "ss@host", and of postgres://host?password=p@ss the user name is
// "host?password=p"; connection errors print both. Every other string,
// URL or keyword/value, passes. The error holds no part of dsn.
func CheckURL(dsn string) error {
	rest, ok := strings.CutPrefix(dsn, "postgres://")
	if !ok {
		rest, ok = strings.CutPrefix(dsn, "postgresql://")
	}
	if !ok {
		return nil // not a URL to pgx: keyword/value
	}
	// pgx's user-info: up to the first '@', if no '/' comes first.
	at := strings.IndexAny(rest, "@/")
	if at < 0 || rest[at] != '@' {
		return nil
	}
	if user, _, _ := strings.Cut(rest[:at], ":"); strings.Contains(user, "?") {
		return errQueryAt // the '@' was in the query of a URL without a path
	}
	// The host list runs to the path or the query; an '@' in it was the
	// user name's or the password's.
	hosts := rest[at+1:]
	if end := strings.IndexAny(hosts, "/?"); end >= 0 {
		hosts = hosts[:end]
	}
	if strings.Contains(hosts, "@") {
		return errRawAt
	}
	return nil
}
