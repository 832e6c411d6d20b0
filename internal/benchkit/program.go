package benchkit

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/internal/redact"
)

// Workload is one named benchmark of a program whose workloads run against
// an E.
type Workload[E any] struct {
	Name    string
	Summary string // one line, for the usage
	// Flags registers the workload's own flags and returns the function
	// that runs it once they are parsed.
	Flags func(fs *flag.FlagSet) func(ctx context.Context, e E) (Result, error)
}

// Program is a benchmark command: its workloads and how to prepare the
// database they run against.
type Program[E any] struct {
	Name      string // as the user types it, for the usage: "postbox bench"
	Prefix    string // of its errors: "bench"
	Truncates string // what a run empties, for --force and the refusal: "the postbox tables"
	Workloads []Workload[E]
	// Setup prepares the database of e (migrations, the program's own
	// tables) through db, a pool of two connections, and returns what the
	// workloads run against.
	Setup func(ctx context.Context, e *Env, db *pgxpool.Pool) (E, error)
}

// UsageError is a command-line mistake: no or an unknown workload, a bad
// flag, a database URL pgx would misread. Exec exits with status 2 for it,
// as postbox does.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

func usageErrorf(format string, args ...any) error {
	return &UsageError{fmt.Errorf(format, args...)}
}

// common holds the flags every workload takes.
type common struct {
	databaseURL string
	cpuprofile  string
	progress    time.Duration
	force       bool
}

// register adds the flags. --database-url has no default value: $DATABASE_URL
// is read after parsing (see url), so that the usage never prints it.
func (c *common) register(fs *flag.FlagSet, truncates string) {
	fs.StringVar(&c.databaseURL, "database-url", "", "PostgreSQL connection string (default $DATABASE_URL)")
	fs.StringVar(&c.cpuprofile, "cpuprofile", "", "write a Go CPU profile of the whole run to this file")
	fs.DurationVar(&c.progress, "progress", 2*time.Second, "how often to report progress on stderr (0: never)")
	fs.BoolVar(&c.force, "force", false, "run even if the database name contains neither \"bench\" nor \"test\" (the run truncates "+truncates+")")
}

// url is --database-url, else $DATABASE_URL.
func (c *common) url() string {
	if c.databaseURL != "" {
		return c.databaseURL
	}
	return os.Getenv("DATABASE_URL")
}

// Run executes one workload. args are the command-line arguments after the
// program's name: the workload's name followed by its flags. The single
// RESULT line is written to stdout, progress to stderr.
func (p *Program[E]) Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		p.usage(stderr)
		if len(args) == 0 {
			return usageErrorf("%s: name a workload", p.Prefix)
		}
		return nil
	}
	i := slices.IndexFunc(p.Workloads, func(w Workload[E]) bool { return w.Name == args[0] })
	if i < 0 {
		p.usage(stderr)
		return usageErrorf("%s: unknown workload %q", p.Prefix, args[0])
	}
	w := p.Workloads[i]
	if err := p.run(ctx, w, args[1:], stdout, stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return fmt.Errorf("%s %s: %w", p.Prefix, w.Name, err)
	}
	return nil
}

func (p *Program[E]) run(ctx context.Context, w Workload[E], args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(p.Name+" "+w.Name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c common
	c.register(fs, p.Truncates)
	run := w.Flags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &UsageError{err} // the flag package printed the usage
	}
	if fs.NArg() > 0 {
		return usageErrorf("unexpected arguments %q", fs.Args())
	}
	if c.cpuprofile != "" {
		f, err := os.Create(c.cpuprofile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	e, db, err := open(ctx, c, stderr, p.Truncates)
	if err != nil {
		return err
	}
	defer e.Close()
	env, err := p.Setup(ctx, e, db)
	if err != nil {
		return err
	}
	res, err := run(ctx, env)
	if err != nil {
		return err
	}
	res.Workload = w.Name
	_, err = fmt.Fprintln(stdout, res.String())
	return err
}

func (p *Program[E]) usage(w io.Writer) {
	fmt.Fprintf(w, "usage: %s <workload> [flags]   (%s <workload> -h lists the flags)\n", p.Name, p.Name)
	fmt.Fprintln(w, "workloads:")
	width := 0
	for _, wl := range p.Workloads {
		width = max(width, len(wl.Name)+1)
	}
	names := make([]string, 0, len(p.Workloads))
	for _, wl := range p.Workloads {
		names = append(names, fmt.Sprintf("  %-*s %s", width, wl.Name, wl.Summary))
	}
	slices.Sort(names)
	fmt.Fprintln(w, strings.Join(names, "\n"))
}

// Main runs a benchmark program as a command: run gets the command line
// after the program's name, and what it prints passes through a redactor
// that masks the passwords of $DATABASE_URL, $PGPASSWORD and every
// --database-url on the command line. An error is printed on stderr and
// exits with status 1, a UsageError with status 2.
func Main(run func(ctx context.Context, args []string, stdout, stderr io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Exec(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv, run)
	stop()
	os.Exit(code)
}

// Exec is Main with its command line, output and environment given; it
// returns the exit status.
func Exec(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string,
	run func(ctx context.Context, args []string, stdout, stderr io.Writer) error) int {
	errs := redact.NewWriter(stderr)
	errs.AddURL(getenv("DATABASE_URL"))
	errs.Add(getenv("PGPASSWORD"))
	errs.AddFlagURLs(args, "database-url")
	err := run(ctx, args, errs.To(stdout), errs)
	if err == nil {
		return 0
	}
	fmt.Fprintln(errs, err)
	if errors.As(err, new(*UsageError)) {
		return 2
	}
	return 1
}
