package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dlq"
	"github.com/postbox-dev/postbox/internal/db"
)

const dlqHelp = `
Inspect and repair dead letters: deliveries that exhausted their subscriber's
attempts, that a handler rejected as permanently invalid, sends to a queue
that did not exist (last error "no-route"), and outbox rows the relay could
not move, quarantined under the subscriber ` + dlq.Relay + `.

  list     list dead letters, oldest dead first
  show     show dead letters in full, with headers and payload
  replay   make dead letters pending again (attempts reset, x-replayed-at and
           x-replay-count set, recorded in postbox.replays); letters of
           ` + dlq.Relay + ` go back into the outbox
  purge    delete dead letters

replay and purge run the SQL functions postbox.replay_dead_letters and
postbox.purge_dead_letters, as psql would; --dry-run counts what they would
touch and changes nothing. Run 'postbox dlq SUBCOMMAND --help' for its flags.`

// checkSubscriberFlag accepts a subscriber name or dlq.Relay.
func checkSubscriberFlag(f *flags, name string) error {
	if name == dlq.Relay {
		return nil
	}
	if err := postbox.ValidateName("--subscriber", name); err != nil {
		return f.invalidErr(err)
	}
	return nil
}

func (c *cli) dlq(ctx context.Context, args []string) error {
	top := newFlags("dlq", "postbox dlq list|show|replay|purge [flags]", dlqHelp)
	usage := func() error { return top.usageErr("dlq: want a subcommand: list, show, replay or purge") }
	if len(args) == 0 {
		return usage()
	}
	switch args[0] {
	case "list":
		return c.dlqList(ctx, args[1:])
	case "show":
		return c.dlqShow(ctx, args[1:])
	case "replay", "purge":
		return c.dlqChange(ctx, args[0], args[1:])
	}
	if _, err := top.parse(c.stdout, args); err != nil {
		return err // --help, or a bad flag
	}
	return top.usageErr("dlq: unknown subcommand %q: want list, show, replay or purge", args[0])
}

// dlqFilter holds the flags that select dead letters.
type dlqFilter struct {
	subscriber, typ, errText, since, until string
	ids                                    idList
	limit                                  int
}

func (d *dlqFilter) register(f *flags, subscriberHelp string, limit int, limitHelp string) {
	f.StringVar(&d.subscriber, "subscriber", "", subscriberHelp)
	f.StringVar(&d.typ, "type", "", "only letters of exactly this message type")
	f.StringVar(&d.errText, "error", "", "only letters whose last error contains this text (literally)")
	f.StringVar(&d.since, "since", "", "only letters dead since this: a duration before now (24h) or a time (RFC 3339)")
	f.StringVar(&d.until, "until", "", "only letters dead before this: a duration before now or a time")
	f.Var(&d.ids, "id", "only this message `ID` (repeatable, or comma-separated)")
	f.IntVar(&d.limit, "limit", limit, limitHelp)
}

// check validates the flags before anything connects.
func (d *dlqFilter) check(f *flags, needSubscriber bool) error {
	if d.subscriber == "" && needSubscriber {
		return f.usageErr("%s: --subscriber is required", f.Name())
	}
	if d.subscriber != "" {
		if err := checkSubscriberFlag(f, d.subscriber); err != nil {
			return err
		}
	}
	for name, v := range map[string]string{"since": d.since, "until": d.until} {
		if v == "" {
			continue
		}
		if _, err := parseTime(v, time.Now()); err != nil {
			return f.usageErr("--%s %v", name, err)
		}
	}
	if d.limit < 0 {
		return f.usageErr("--limit %d: negative", d.limit)
	}
	return nil
}

// filter builds the dlq.Filter; durations count back from the database's
// clock.
func (d *dlqFilter) filter(now time.Time) dlq.Filter {
	f := dlq.Filter{Subscriber: d.subscriber, Type: d.typ, ErrorContains: d.errText, IDs: d.ids}
	if d.since != "" {
		f.Since, _ = parseTime(d.since, now) // checked
	}
	if d.until != "" {
		f.Until, _ = parseTime(d.until, now)
	}
	return f
}

func databaseNow(ctx context.Context, pool *pgxpool.Pool) (time.Time, error) {
	now, err := db.New(pool).DatabaseNow(ctx)
	if err != nil {
		return time.Time{}, fmt.Errorf("read the database clock: %w", err)
	}
	return now, nil
}

func (c *cli) dlqList(ctx context.Context, args []string) error {
	f := newFlags("dlq list", "postbox dlq list [flags]", `
List dead letters, oldest dead first, across every subscriber unless
--subscriber is given. The table shows no payloads; --json includes them
(as JSON when the payload is JSON, else base64 in payload_base64).`)
	g := f.common()
	var sel dlqFilter
	sel.register(f, "only this subscriber's letters (default every subscriber)",
		dlq.DefaultLimit, fmt.Sprintf("list at most this many (at most %d)", dlq.MaxLimit))
	asJSON := f.Bool("json", false, "print JSON instead of a table")
	pos, err := f.parse(c.stdout, args)
	if err != nil {
		return err
	}
	if err := f.noArgs(pos); err != nil {
		return err
	}
	if err := sel.check(f, false); err != nil {
		return err
	}
	if sel.limit == 0 || sel.limit > dlq.MaxLimit {
		return f.usageErr("--limit %d: want 1 to %d", sel.limit, dlq.MaxLimit)
	}
	if _, err := c.logger(f, g); err != nil {
		return err
	}
	pool, err := c.open(ctx, f, g, poolOptions{app: "postbox-dlq"})
	if err != nil {
		return err
	}
	defer pool.Close()
	now, err := databaseNow(ctx, pool)
	if err != nil {
		return err
	}
	filter := sel.filter(now)
	filter.Limit = sel.limit
	letters, err := dlq.List(ctx, pool, filter)
	if err != nil {
		return err
	}
	if *asJSON {
		out := make([]letterJSON, len(letters))
		for i, l := range letters {
			out[i] = toJSON(l)
		}
		return writeJSON(c.stdout, out)
	}
	if len(letters) == 0 {
		_, err := fmt.Fprintln(c.stdout, "no dead letters")
		return err
	}
	err = writeTable(c.stdout, func(w io.Writer) {
		fmt.Fprintln(w, "SUBSCRIBER\tMESSAGE ID\tTYPE\tATTEMPTS\tREPLAYS\tDEAD AT\tLAST ERROR")
		for _, l := range letters {
			fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%d\t%s\t%s\n", l.Subscriber, l.MessageID, cell(l.Type, 40),
				l.Attempts, l.ReplayCount, timestamp(l.DeadAt), cell(l.LastError, 60))
		}
	})
	if err == nil && len(letters) == filter.Limit {
		fmt.Fprintf(c.stdout, "(first %d; raise --limit or narrow the filter for more)\n", filter.Limit)
	}
	return err
}

func (c *cli) dlqShow(ctx context.Context, args []string) error {
	f := newFlags("dlq show", "postbox dlq show [--subscriber S] ID... [flags]", `
Show dead letters in full: every field, the headers and the payload (JSON
indented, other text as is, binary as a hex dump). IDs are message IDs,
given as arguments or with --id. Without --subscriber, every subscriber's
letter with that ID is shown.`)
	g := f.common()
	subscriber := f.String("subscriber", "", "only this subscriber's letters")
	var ids idList
	f.Var(&ids, "id", "message `ID` (repeatable)")
	asJSON := f.Bool("json", false, "print JSON")
	pos, err := f.parse(c.stdout, args)
	if err != nil {
		return err
	}
	for _, p := range pos {
		if err := ids.Set(p); err != nil {
			return f.usageErr("dlq show: %v", err)
		}
	}
	if len(ids) == 0 {
		return f.usageErr("dlq show: give at least one message ID")
	}
	if len(ids) > dlq.MaxLimit {
		return f.usageErr("dlq show: at most %d IDs", dlq.MaxLimit)
	}
	if *subscriber != "" {
		if err := checkSubscriberFlag(f, *subscriber); err != nil {
			return err
		}
	}
	if _, err := c.logger(f, g); err != nil {
		return err
	}
	pool, err := c.open(ctx, f, g, poolOptions{app: "postbox-dlq"})
	if err != nil {
		return err
	}
	defer pool.Close()
	letters, err := dlq.List(ctx, pool, dlq.Filter{Subscriber: *subscriber, IDs: ids, Limit: dlq.MaxLimit})
	if err != nil {
		return err
	}
	if len(letters) == 0 {
		return fmt.Errorf("dlq show: no dead letter with ID %s", ids.String())
	}
	if *asJSON {
		out := make([]letterJSON, len(letters))
		for i, l := range letters {
			out[i] = toJSON(l)
		}
		return writeJSON(c.stdout, out)
	}
	for i, l := range letters {
		if i > 0 {
			fmt.Fprintln(c.stdout)
		}
		c.printLetter(l)
	}
	return nil
}

func (c *cli) printLetter(l dlq.DeadLetter) {
	w := c.stdout
	field := func(name string, v any) { fmt.Fprintf(w, "%-14s %v\n", name+":", v) }
	field("subscriber", l.Subscriber)
	field("message id", l.MessageID)
	field("topic", safe(l.Topic))
	field("type", safe(l.Type))
	field("key", cell(safe(l.Key), 1000))
	field("attempts", l.Attempts)
	field("replay count", l.ReplayCount)
	field("created at", l.CreatedAt.UTC().Format(time.RFC3339Nano))
	field("dead at", l.DeadAt.UTC().Format(time.RFC3339Nano))
	field("last error", safe(l.LastError))
	fmt.Fprintln(w, "headers:")
	for _, k := range slices.Sorted(maps.Keys(l.Headers)) {
		fmt.Fprintf(w, "  %s: %s\n", safe(k), safe(l.Headers[k]))
	}
	fmt.Fprintf(w, "payload (%d bytes):\n", len(l.Payload))
	var indented bytes.Buffer
	switch {
	case json.Indent(&indented, l.Payload, "", "  ") == nil:
		// JSON escapes control characters, so this is safe on a terminal.
		fmt.Fprintln(w, indented.String())
	case utf8.Valid(l.Payload):
		fmt.Fprintln(w, safe(string(l.Payload)))
	default:
		fmt.Fprint(w, hex.Dump(l.Payload))
	}
}

// letterJSON is a dead letter as --json prints it.
type letterJSON struct {
	Subscriber  string            `json:"subscriber"`
	MessageID   uuid.UUID         `json:"message_id"`
	Topic       string            `json:"topic"`
	Type        string            `json:"type"`
	Key         string            `json:"key,omitempty"`
	Attempts    int               `json:"attempts"`
	ReplayCount int               `json:"replay_count"`
	LastError   string            `json:"last_error"`
	CreatedAt   time.Time         `json:"created_at"`
	DeadAt      time.Time         `json:"dead_at"`
	Headers     map[string]string `json:"headers,omitempty"`
	// Payload is the payload when it is JSON; otherwise PayloadBase64
	// holds it.
	Payload       json.RawMessage `json:"payload,omitempty"`
	PayloadBase64 []byte          `json:"payload_base64,omitempty"`
}

func toJSON(l dlq.DeadLetter) letterJSON {
	out := letterJSON{
		Subscriber: l.Subscriber, MessageID: l.MessageID, Topic: l.Topic, Type: l.Type, Key: l.Key,
		Attempts: l.Attempts, ReplayCount: l.ReplayCount, LastError: l.LastError,
		CreatedAt: l.CreatedAt, DeadAt: l.DeadAt, Headers: l.Headers,
	}
	if json.Valid(l.Payload) {
		out.Payload = l.Payload
	} else {
		out.PayloadBase64 = l.Payload
	}
	return out
}

// dlqChange runs replay or purge.
func (c *cli) dlqChange(ctx context.Context, action string, args []string) error {
	verb, done := "replay", "replayed"
	what := `Make the selected dead letters pending again, so their subscriber's
consumers handle them: attempts reset to 0, replay count raised, headers
x-replayed-at and x-replay-count set, one row per letter in postbox.replays.
A replayed letter is handled before its key's later messages that are still
pending, and a letter whose key has an earlier dead letter the selection
leaves out is not replayed (its key keeps its order). A replayed no-route
letter needs its queue declared first (postbox queue declare NAME), or it
waits for a consumer that does not exist. Letters of ` + dlq.Relay + ` (outbox rows
the relay could not move) go back into the outbox.

Letters are taken in their original order`
	if action == "purge" {
		verb, done = "purge", "purged"
		what = `Delete the selected dead letters for good.

Letters are taken oldest dead first`
	}
	f := newFlags("dlq "+action, "postbox dlq "+action+" --subscriber S [flags]", what+`, in transactions of at most `+fmt.Sprint(dlq.MaxLimit)+`;
letters that die after the command starts are left alone, so a letter is
`+done+` at most once per run. --dry-run prints how many would be `+done+`
and changes nothing.`)
	g := f.common()
	var sel dlqFilter
	sel.register(f, "the subscriber (or queue, or "+dlq.Relay+") whose letters to "+verb+" (required)",
		0, "at most this many (default 0: every matching letter)")
	dryRun := f.Bool("dry-run", false, "count what would be "+done+"; change nothing")
	asJSON := f.Bool("json", false, "print JSON")
	pos, err := f.parse(c.stdout, args)
	if err != nil {
		return err
	}
	if err := f.noArgs(pos); err != nil {
		return err
	}
	if err := sel.check(f, true); err != nil {
		return err
	}
	if _, err := c.logger(f, g); err != nil {
		return err
	}
	pool, err := c.open(ctx, f, g, poolOptions{app: "postbox-dlq"})
	if err != nil {
		return err
	}
	defer pool.Close()
	now, err := databaseNow(ctx, pool)
	if err != nil {
		return err
	}
	filter := sel.filter(now)
	// Letters that die from now on (again, after a replay) are not ours.
	if filter.Until.IsZero() || filter.Until.After(now) {
		filter.Until = now.Add(time.Microsecond)
	}

	res := changeResult{Subscriber: sel.subscriber, Action: action, DryRun: *dryRun}
	if *dryRun {
		filter.Limit = dlq.MaxLimit
		if sel.limit > 0 && sel.limit < dlq.MaxLimit {
			filter.Limit = sel.limit
		}
		count := dlq.Count // what Replay would take
		if action == "purge" {
			count = dlq.CountPurge
		}
		n, err := count(ctx, pool, filter)
		if err != nil {
			return err
		}
		res.Count = n
		// Count stops at MaxLimit.
		res.AtLeast = n == dlq.MaxLimit && (sel.limit == 0 || sel.limit > dlq.MaxLimit)
	} else {
		change := dlq.Replay
		if action == "purge" {
			change = dlq.Purge
		}
		for {
			filter.Limit = dlq.MaxLimit
			if sel.limit > 0 {
				filter.Limit = min(dlq.MaxLimit, sel.limit-res.Count)
			}
			n, err := change(ctx, pool, filter)
			res.Count += n
			if err != nil {
				if res.Count > 0 {
					return fmt.Errorf("%s %d letters, then: %w", done, res.Count, err)
				}
				return err
			}
			if n < filter.Limit || (sel.limit > 0 && res.Count >= sel.limit) {
				break
			}
		}
	}
	if *asJSON {
		return writeJSON(c.stdout, res)
	}
	n := fmt.Sprint(res.Count)
	if res.AtLeast {
		n = "at least " + n
	}
	letters := "dead letters"
	if res.Count == 1 && !res.AtLeast {
		letters = "dead letter"
	}
	if res.DryRun {
		_, err = fmt.Fprintf(c.stdout, "would %s %s %s of %s (dry run: nothing changed)\n", verb, n, letters, res.Subscriber)
	} else {
		_, err = fmt.Fprintf(c.stdout, "%s %s %s of %s\n", done, n, letters, res.Subscriber)
	}
	return err
}

// changeResult is what replay and purge print with --json.
type changeResult struct {
	Subscriber string `json:"subscriber"`
	Action     string `json:"action"`
	DryRun     bool   `json:"dry_run"`
	Count      int    `json:"count"`
	// AtLeast: a dry run counts up to dlq.MaxLimit letters; more may match.
	AtLeast bool `json:"at_least,omitempty"`
}
