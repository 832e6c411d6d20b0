package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/internal/redact"
)

// flags is one command's flag set with its usage text. Flags and positional
// arguments may be mixed ("queue declare NAME --max-attempts 3"); "--" ends
// the flags.
type flags struct {
	*flag.FlagSet
	synopsis string // e.g. "postbox dlq replay --subscriber S [flags]"
	help     string // what the command does, one paragraph or more
}

func newFlags(name, synopsis, help string) *flags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // parse errors are reported by cli.run
	fs.Usage = func() {}
	return &flags{FlagSet: fs, synopsis: synopsis, help: help}
}

func (f *flags) usage(w io.Writer) {
	fmt.Fprintf(w, "usage: %s\n\n%s\n", f.synopsis, strings.TrimSpace(f.help))
	first := true
	f.VisitAll(func(fl *flag.Flag) {
		if first {
			fmt.Fprint(w, "\nflags:\n")
			first = false
		}
		typ, help := flag.UnquoteUsage(fl)
		fmt.Fprintf(w, "  --%s", fl.Name)
		if typ != "" {
			fmt.Fprintf(w, " %s", typ)
		}
		fmt.Fprintf(w, "\n        %s", strings.ReplaceAll(help, "\n", "\n        "))
		switch fl.DefValue {
		case "", "0", "0s", "false", "[]":
		default:
			if typ == "string" {
				fmt.Fprintf(w, " (default %q)", fl.DefValue)
			} else {
				fmt.Fprintf(w, " (default %s)", fl.DefValue)
			}
		}
		fmt.Fprintln(w)
	})
}

// usageErr returns a usage error that prints this command's usage.
func (f *flags) usageErr(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...), usage: f.usage}
}

// invalidErr is a usage error carrying the library's validation error for
// a flag's value, printed as it is, then this command's usage.
func (f *flags) invalidErr(err error) error {
	return &usageError{err: err, usage: f.usage}
}

// parse parses args and returns the positional arguments. --help prints the
// usage on stdout and returns flag.ErrHelp.
func (f *flags) parse(stdout io.Writer, args []string) ([]string, error) {
	var pos []string
	for {
		err := f.Parse(args)
		if errors.Is(err, flag.ErrHelp) {
			f.usage(stdout)
			return nil, flag.ErrHelp
		}
		if err != nil {
			return nil, f.usageErr("%s: %v", f.Name(), err)
		}
		rest := f.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if i := len(args) - len(rest); i > 0 && args[i-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// noArgs rejects positional arguments.
func (f *flags) noArgs(pos []string) error {
	if len(pos) > 0 {
		return f.usageErr("%s: unexpected argument %q", f.Name(), pos[0])
	}
	return nil
}

// common are the flags of every command that talks to the database.
type common struct {
	databaseURL string
	logFormat   string
	logLevel    string
}

func (f *flags) common() *common {
	var g common
	f.StringVar(&g.databaseURL, "database-url", "",
		"PostgreSQL connection string (default $POSTBOX_DATABASE_URL, else $DATABASE_URL)")
	f.StringVar(&g.logFormat, "log-format", "text", "log format on stderr: text or json")
	f.StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	return &g
}

// logger builds the stderr logger, or returns a usage error for bad flags.
func (c *cli) logger(f *flags, g *common) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, f.usageErr("--log-level %q: want debug, info, warn or error", g.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch g.logFormat {
	case "text":
		return slog.New(slog.NewTextHandler(c.stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(c.stderr, opts)), nil
	}
	return nil, f.usageErr("--log-format %q: want text or json", g.logFormat)
}

// databaseURL resolves the connection string: flag, then environment.
func (c *cli) databaseURL(f *flags, g *common) (string, error) {
	switch {
	case g.databaseURL != "":
		return g.databaseURL, nil
	case c.getenv("POSTBOX_DATABASE_URL") != "":
		return c.getenv("POSTBOX_DATABASE_URL"), nil
	case c.getenv("DATABASE_URL") != "":
		return c.getenv("DATABASE_URL"), nil
	}
	return "", f.usageErr("no database: pass --database-url or set POSTBOX_DATABASE_URL or DATABASE_URL")
}

// poolOptions tune the pool a command opens.
type poolOptions struct {
	app      string // application_name, unless the URL sets one
	maxConns int32  // at least this many connections, unless the URL sets pool_max_conns
}

// open resolves the database URL, opens a pool and checks that the server
// answers. The connection password is registered with the stderr redactor
// before anything can print it.
func (c *cli) open(ctx context.Context, f *flags, g *common, opts poolOptions) (*pgxpool.Pool, error) {
	dsn, err := c.databaseURL(f, g)
	if err != nil {
		return nil, err
	}
	c.stderr.AddURL(dsn)
	if err := redact.CheckURL(dsn); err != nil {
		// Refused before pgx reads it: pgx would take part of the
		// password for the host and print it in its connection errors.
		return nil, f.usageErr("database url: %v", err)
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgconn's parse errors already hide the password; the redactor
		// catches what it can recognise besides.
		return nil, fmt.Errorf("database url: %w", err)
	}
	c.stderr.Add(cfg.ConnConfig.Password)
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok && opts.app != "" {
		cfg.ConnConfig.RuntimeParams["application_name"] = opts.app
	}
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 10 * time.Second
	}
	if !strings.Contains(dsn, "pool_max_conns") && cfg.MaxConns < opts.maxConns {
		cfg.MaxConns = opts.maxConns
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, cfg.ConnConfig.ConnectTimeout+time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	return pool, nil
}

// idList is a repeatable --id flag; each value may also hold several IDs
// separated by commas.
type idList []uuid.UUID

func (l *idList) String() string {
	s := make([]string, len(*l))
	for i, id := range *l {
		s[i] = id.String()
	}
	return strings.Join(s, ",")
}

func (l *idList) Set(v string) error {
	for part := range strings.SplitSeq(v, ",") {
		id, err := uuid.Parse(strings.TrimSpace(part))
		if err != nil {
			return fmt.Errorf("%q is not a message ID (UUID)", part)
		}
		*l = append(*l, id)
	}
	return nil
}

// parseTime reads a --since/--until value: a duration before now ("24h",
// "90m") or a time (RFC 3339, or a date 2006-01-02 in UTC).
func parseTime(v string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(v); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("%q: a duration before now must not be negative", v)
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, v); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("%q: want a duration before now (24h) or a time (RFC 3339)", v)
}
