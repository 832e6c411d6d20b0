package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
)

func (c *cli) subscribe(ctx context.Context, args []string) error {
	f := newFlags("subscribe", "postbox subscribe --subscriber S --topic PATTERN [--filter JSONPATH] [flags]", `
Subscribe a subscriber to a topic, or to a pattern of topics whose
dot-separated segments may be '*' (exactly one segment) or '#' (zero or
more): "order.*" matches "order.created"; "order.#" matches "order" and
"order.created.eu". The subscriber is declared with default settings if it
does not exist. Subscribing again with the same topic replaces the filter.

A filter is a SQL/JSON path over the JSON payload: a predicate decides by
its value ('$.total >= 10000'), any other path matches when it yields an item
('$.total ? (@ >= 10000)'). Payloads that are not JSON match no filter.`)
	g := f.common()
	subscriber := f.String("subscriber", "", "subscriber name (required)")
	topic := f.String("topic", "", "topic name or pattern (required)")
	filter := f.String("filter", "", "SQL/JSON path the payload must match (default: every message)")
	pos, err := f.parse(c.stdout, args)
	if err != nil {
		return err
	}
	if err := f.noArgs(pos); err != nil {
		return err
	}
	if err := requireNames(f, *subscriber, *topic); err != nil {
		return err
	}
	if _, err := dispatcher.PatternRegexp(*topic); err != nil {
		return f.invalidErr(err)
	}
	if _, err := c.logger(f, g); err != nil {
		return err
	}
	pool, err := c.open(ctx, f, g, poolOptions{app: "postbox-admin"})
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: *subscriber, Topic: *topic, Filter: *filter}); err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.stdout, "subscribed %s to %s\n", *subscriber, *topic)
	return err
}

func (c *cli) unsubscribe(ctx context.Context, args []string) error {
	f := newFlags("unsubscribe", "postbox unsubscribe --subscriber S --topic PATTERN [flags]", `
Remove the subscription of a subscriber to a topic pattern (as given to
subscribe). Deliveries already in the inbox stay.`)
	g := f.common()
	subscriber := f.String("subscriber", "", "subscriber name (required)")
	topic := f.String("topic", "", "topic name or pattern, exactly as subscribed (required)")
	pos, err := f.parse(c.stdout, args)
	if err != nil {
		return err
	}
	if err := f.noArgs(pos); err != nil {
		return err
	}
	if err := requireNames(f, *subscriber, *topic); err != nil {
		return err
	}
	if _, err := c.logger(f, g); err != nil {
		return err
	}
	pool, err := c.open(ctx, f, g, poolOptions{app: "postbox-admin"})
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := dispatcher.Unsubscribe(ctx, pool, *subscriber, *topic); err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.stdout, "unsubscribed %s from %s\n", *subscriber, *topic)
	return err
}

func requireNames(f *flags, subscriber, topic string) error {
	switch {
	case subscriber == "":
		return f.usageErr("%s: --subscriber is required", f.Name())
	case topic == "":
		return f.usageErr("%s: --topic is required", f.Name())
	}
	if err := postbox.ValidateName("--subscriber", subscriber); err != nil {
		return f.invalidErr(err)
	}
	return nil
}

// queueJSON is one subscriber as `postbox queues --json` prints it.
type queueJSON struct {
	Name              string             `json:"name"`
	Kind              string             `json:"kind"`
	Partitions        int                `json:"partitions"`
	MaxAttempts       int                `json:"max_attempts"`
	BackoffInitial    string             `json:"backoff_initial"`
	BackoffMax        string             `json:"backoff_max"`
	BackoffMultiplier float64            `json:"backoff_multiplier"`
	DedupWindow       string             `json:"dedup_window"`
	KeyOnDead         string             `json:"key_on_dead"`
	CreatedAt         time.Time          `json:"created_at"`
	Subscriptions     []subscriptionJSON `json:"subscriptions"`
}

type subscriptionJSON struct {
	Topic  string `json:"topic"`
	Filter string `json:"filter,omitempty"`
}

func (c *cli) queues(ctx context.Context, args []string) error {
	f := newFlags("queues", "postbox queues [flags]", `
List every queue and topic subscriber with its settings and subscriptions.
For depths, see postbox stats.`)
	g := f.common()
	asJSON := f.Bool("json", false, "print JSON instead of a table")
	pos, err := f.parse(c.stdout, args)
	if err != nil {
		return err
	}
	if err := f.noArgs(pos); err != nil {
		return err
	}
	if _, err := c.logger(f, g); err != nil {
		return err
	}
	pool, err := c.open(ctx, f, g, poolOptions{app: "postbox-admin"})
	if err != nil {
		return err
	}
	defer pool.Close()
	subs, err := dispatcher.Subscribers(ctx, pool)
	if err != nil {
		return err
	}
	subscriptions, err := dispatcher.Subscriptions(ctx, pool)
	if err != nil {
		return err
	}
	out := make([]queueJSON, len(subs))
	index := make(map[string]int, len(subs))
	for i, s := range subs {
		index[s.Name] = i
		o := s.Options
		out[i] = queueJSON{
			Name: s.Name, Kind: s.Kind, Partitions: o.Partitions, MaxAttempts: o.MaxAttempts,
			BackoffInitial: duration(o.Backoff.Initial), BackoffMax: duration(o.Backoff.Max),
			BackoffMultiplier: o.Backoff.Multiplier, DedupWindow: duration(o.DedupWindow), KeyOnDead: o.KeyOnDead,
			CreatedAt: s.CreatedAt, Subscriptions: []subscriptionJSON{},
		}
	}
	for _, s := range subscriptions {
		if i, ok := index[s.Subscriber]; ok {
			out[i].Subscriptions = append(out[i].Subscriptions, subscriptionJSON{Topic: s.Topic, Filter: s.Filter})
		}
	}
	if *asJSON {
		return writeJSON(c.stdout, out)
	}
	if len(out) == 0 {
		_, err := fmt.Fprintln(c.stdout, "no queues or subscribers")
		return err
	}
	return writeTable(c.stdout, func(w io.Writer) {
		fmt.Fprintln(w, "NAME\tKIND\tPARTITIONS\tMAX ATTEMPTS\tBACKOFF\tRETENTION\tKEY ON DEAD\tSUBSCRIPTIONS")
		for _, q := range out {
			topics := make([]string, len(q.Subscriptions))
			for i, s := range q.Subscriptions {
				topics[i] = s.Topic
				if s.Filter != "" {
					topics[i] += " [" + s.Filter + "]"
				}
			}
			subs := strings.Join(topics, ", ")
			if subs == "" {
				subs = "-"
			}
			fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%s..%s x%g\t%s\t%s\t%s\n", q.Name, q.Kind, q.Partitions, q.MaxAttempts,
				q.BackoffInitial, q.BackoffMax, q.BackoffMultiplier, q.DedupWindow, q.KeyOnDead, cell(subs, 200))
		}
	})
}

func (c *cli) queue(ctx context.Context, args []string) error {
	top := newFlags("queue", "postbox queue declare NAME [flags]", `
  declare  create a point-to-point queue, or change the settings of one

Run 'postbox queue declare --help' for its flags.`)
	if len(args) > 0 && args[0] == "declare" {
		return c.queueDeclare(ctx, args[1:])
	}
	if len(args) == 0 {
		return top.usageErr("queue: want a subcommand: declare")
	}
	if _, err := top.parse(c.stdout, args); err != nil {
		return err
	}
	return top.usageErr("queue: unknown subcommand %q: want declare", args[0])
}

func (c *cli) queueDeclare(ctx context.Context, args []string) error {
	f := newFlags("queue declare", "postbox queue declare NAME [flags]", `
Declare the queue NAME, to which producers send with outbox.Send: each
message is handled by one of the queue's consumers. For a queue that exists,
only the settings given as flags change; the others keep their values.
A queue and a topic subscriber cannot share a name.`)
	g := f.common()
	d := dispatcher.DefaultBackoff
	partitions := f.Int("partitions", dispatcher.DefaultPartitions, "partitions deliveries are spread over by key (1 to 4096)")
	maxAttempts := f.Int("max-attempts", dispatcher.DefaultMaxAttempts, "attempts before a delivery becomes a dead letter")
	initial := f.Duration("backoff-initial", d.Initial, "wait before the first retry")
	maxWait := f.Duration("backoff-max", d.Max, "longest wait between retries")
	multiplier := f.Float64("backoff-multiplier", d.Multiplier, "growth of the wait per retry (at least 1)")
	dedupWindow := f.Duration("dedup-window", dispatcher.DefaultDedupWindow, "how long handled message IDs are remembered, so a copy arriving within it is dropped")
	keyOnDead := f.String("key-on-dead", dispatcher.KeyProceeds, "what a key's later messages do while one of its messages is a dead letter: "+
		dispatcher.KeyProceeds+" (they are handled) or "+dispatcher.KeyParks+" (they wait until it is replayed or purged)")
	pos, err := f.parse(c.stdout, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return f.usageErr("queue declare: want one queue NAME")
	}
	name := pos[0]
	if err := postbox.ValidateName("NAME", name); err != nil {
		return f.invalidErr(err)
	}
	if *keyOnDead != dispatcher.KeyProceeds && *keyOnDead != dispatcher.KeyParks {
		return f.usageErr("--key-on-dead %q: want %s or %s", *keyOnDead, dispatcher.KeyProceeds, dispatcher.KeyParks)
	}
	set := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	if _, err := c.logger(f, g); err != nil {
		return err
	}
	pool, err := c.open(ctx, f, g, poolOptions{app: "postbox-admin"})
	if err != nil {
		return err
	}
	defer pool.Close()

	// New queue: every flag's value (defaults included). Existing queue:
	// its settings, with the flags given on the command line applied.
	opts := dispatcher.Options{}
	existing, err := dispatcher.GetSubscriber(ctx, pool, name)
	isNew := errors.Is(err, dispatcher.ErrNotFound)
	switch {
	case isNew:
	case err != nil:
		return err
	case existing.Kind != dispatcher.KindQueue:
		return fmt.Errorf("%w: %q is a topic subscriber", dispatcher.ErrKindConflict, name)
	default:
		opts = existing.Options
	}
	apply := func(flag string, assign func()) {
		if isNew || set[flag] {
			assign()
		}
	}
	apply("partitions", func() { opts.Partitions = *partitions })
	apply("max-attempts", func() { opts.MaxAttempts = *maxAttempts })
	apply("backoff-initial", func() { opts.Backoff.Initial = *initial })
	apply("backoff-max", func() { opts.Backoff.Max = *maxWait })
	apply("backoff-multiplier", func() { opts.Backoff.Multiplier = *multiplier })
	apply("dedup-window", func() { opts.DedupWindow = *dedupWindow })
	apply("key-on-dead", func() { opts.KeyOnDead = *keyOnDead })
	if err := dispatcher.DeclareQueue(ctx, pool, name, opts); err != nil {
		return err
	}
	verb := "declared"
	if !isNew {
		verb = "updated"
	}
	_, err = fmt.Fprintf(c.stdout, "%s queue %s\n", verb, name)
	return err
}
