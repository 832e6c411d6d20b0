package main

import (
	"context"
	"errors"
	"io"
	"strings"

	"github.com/postbox-dev/postbox/internal/bench"
	"github.com/postbox-dev/postbox/internal/benchkit"
)

// bench hands everything after "bench" to package bench, which parses its
// own flags and prints its own usage. The database precedence of the other
// commands holds here too: without --database-url, POSTBOX_DATABASE_URL,
// else DATABASE_URL, is passed on as the flag, read through c.getenv as
// every command reads its environment.
func (c *cli) bench(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return &usageError{msg: "bench: name a workload", usage: func(w io.Writer) {
			bench.Run(ctx, []string{"--help"}, w, w)
		}}
	}
	hasURL := false
	for _, a := range args {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		hasURL = hasURL || strings.HasPrefix(a, "-") && name == "database-url"
	}
	// Every password in sight is registered already (cli.run); what bench
	// prints to stdout passes through a redactor with the same secrets.
	url := c.getenv("POSTBOX_DATABASE_URL")
	if url == "" {
		url = c.getenv("DATABASE_URL")
	}
	if !hasURL && url != "" && len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		args = append([]string{args[0], "--database-url=" + url}, args[1:]...)
	}
	err := bench.Run(ctx, args, c.stderr.To(c.stdout), c.stderr)
	if errors.As(err, new(*benchkit.UsageError)) {
		// Exit 2; bench has printed its usage already where one helps
		// (an unknown workload, a bad flag).
		return &usageError{msg: err.Error(), usage: func(io.Writer) {}}
	}
	return err
}
