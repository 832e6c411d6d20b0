// Command postbox is the postbox worker and operator tool: it runs the
// relay, migrates the schema, shows queue depths, manages routing, and
// lists, replays and purges dead letters.
//
//	postbox migrate up --database-url postgres://...
//	postbox relay --http 127.0.0.1:9090
//	postbox stats
//	postbox dlq list --subscriber inventory --since 24h
//	postbox dlq replay --subscriber inventory --error timeout --dry-run
//
// The database comes from --database-url, else POSTBOX_DATABASE_URL, else
// DATABASE_URL. Exit status: 0 on success (and for --help), 2 for a usage
// mistake (unknown command, bad or missing flag), 1 for any other failure.
// Logs go to stderr (--log-format text|json, --log-level); results go to
// stdout, as a table or, with --json, as JSON. Passwords are never printed:
// everything written to stderr has the connection password replaced.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/postbox-dev/postbox"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// After the first signal, a second one kills the process at once.
		<-ctx.Done()
		stop()
	}()
	code := newCLI(os.Stdout, os.Stderr, os.Getenv).run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

// cli holds what every command shares: its output streams and environment.
type cli struct {
	stdout io.Writer
	stderr *redactor // every byte to stderr passes through it
	getenv func(string) string
}

func newCLI(stdout, stderr io.Writer, getenv func(string) string) *cli {
	return &cli{stdout: stdout, stderr: newRedactor(stderr), getenv: getenv}
}

// commands, in the order the top-level usage lists them.
var commands = []struct {
	name, summary string
	run           func(c *cli, ctx context.Context, args []string) error
}{
	{"relay", "move committed outbox messages to their subscribers until stopped", (*cli).relay},
	{"migrate", "apply, roll back or show schema migrations (up|down|status)", (*cli).migrate},
	{"stats", "queue depths per subscriber and the outbox backlog", (*cli).stats},
	{"admin", "serve the admin web pages: overview, subscribers, dead letters", (*cli).admin},
	{"doctor", "check the database for what will hurt postbox (exit 1 on a problem)", (*cli).doctor},
	{"grants", "print (or --apply) the least-privilege roles for producers, relays, consumers, operators", (*cli).grants},
	{"dlq", "list, show, replay or purge dead letters", (*cli).dlq},
	{"queues", "list subscribers, queues and their subscriptions", (*cli).queues},
	{"queue", "declare a queue or change its settings (queue declare NAME)", (*cli).queue},
	{"subscribe", "subscribe a subscriber to a topic pattern", (*cli).subscribe},
	{"unsubscribe", "remove a subscription", (*cli).unsubscribe},
	{"route", "content-based routing rules of a router (add|list|remove|replay)", (*cli).route},
	{"bench", "run a named benchmark workload (see postbox bench --help)", (*cli).bench},
}

func (c *cli) usage(w io.Writer) {
	fmt.Fprint(w, `usage: postbox COMMAND [flags]

postbox moves messages from a PostgreSQL transactional outbox to queues and
topic subscribers, and lets operators inspect and repair them.

commands:
`)
	for _, cmd := range commands {
		fmt.Fprintf(w, "  %-12s %s\n", cmd.name, cmd.summary)
	}
	fmt.Fprint(w, `
Run 'postbox COMMAND --help' for a command's flags. The database comes from
--database-url, else POSTBOX_DATABASE_URL, else DATABASE_URL.
Exit status: 0 success, 1 failure, 2 usage mistake.
`)
}

// run executes the command line and returns the exit status.
func (c *cli) run(ctx context.Context, args []string) int {
	c.registerSecrets(args)
	err := c.dispatch(ctx, args)
	var ue *usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(c.stderr, "%s\n\n", ue)
		ue.usage(c.stderr)
		return 2
	case errors.As(err, new(errQuiet)):
		return 1 // reported on stdout already
	case errors.Is(err, postbox.ErrInvalid):
		// A value the library rejected (a name, a filter): still the
		// caller's mistake.
		fmt.Fprintln(c.stderr, message(err))
		return 2
	default:
		fmt.Fprintln(c.stderr, message(err))
		return 1
	}
}

func (c *cli) dispatch(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return &usageError{msg: "no command given", usage: c.usage}
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		if len(args) > 1 && args[0] == "help" {
			// "postbox help dlq" is "postbox dlq --help".
			return c.dispatch(ctx, []string{args[1], "--help"})
		}
		c.usage(c.stdout)
		return flag.ErrHelp
	}
	for _, cmd := range commands {
		if cmd.name == args[0] {
			return cmd.run(c, ctx, args[1:])
		}
	}
	return &usageError{msg: fmt.Sprintf("unknown command %q", args[0]), usage: c.usage}
}

// usageError is a command-line mistake: exit status 2, message and usage on
// stderr. err, when set, is the library's validation error for the value,
// printed as it is; otherwise msg is the CLI's own.
type usageError struct {
	msg   string
	err   error
	usage func(io.Writer)
}

func (e *usageError) Error() string {
	if e.err != nil {
		return e.err.Error()
	}
	return "postbox: " + e.msg
}

// message is err as the binary prints it: the library's validation errors
// carry "postbox: " already and are printed as they are; every other error
// gets the prefix.
func message(err error) string {
	if _, ok := err.(*postbox.ValidationError); ok {
		return err.Error()
	}
	return "postbox: " + err.Error()
}
