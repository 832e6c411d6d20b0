package main

import (
	"context"
	"io"
	"strings"

	"github.com/postbox-dev/postbox/bench"
)

// bench hands everything after "bench" to package bench, which parses its
// own flags and prints its own usage. The database precedence of the other
// commands holds here too: without --database-url, POSTBOX_DATABASE_URL is
// passed on as the flag (bench itself falls back to DATABASE_URL). Every
// password in sight is registered with the stderr redactor first.
func (c *cli) bench(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return &usageError{msg: "bench: name a workload", usage: func(w io.Writer) {
			bench.Run(ctx, []string{"--help"}, w, w)
		}}
	}
	hasURL := false
	for i, a := range args {
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "database-url" {
			continue
		}
		hasURL = true
		if !hasValue && i+1 < len(args) {
			value = args[i+1]
		}
		c.stderr.addURL(value)
	}
	for _, env := range []string{"POSTBOX_DATABASE_URL", "DATABASE_URL"} {
		c.stderr.addURL(c.getenv(env))
	}
	if url := c.getenv("POSTBOX_DATABASE_URL"); !hasURL && url != "" && len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		args = append([]string{args[0], "--database-url=" + url}, args[1:]...)
	}
	return bench.Run(ctx, args, c.stdout, c.stderr)
}
