package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
)

const routeHelp = `
Content-based routing rules. A message sent to a router's name (outbox.Send)
goes to the queue of the router's first rule, by position, that it matches:
by message type (--type), by a SQL/JSON path over the JSON payload
(--predicate), or both; a rule with neither is the router's default route.
When no rule matches, or the chosen queue is not declared, the message is a
dead letter of the router with last error "no-route". The relay applies the
rules inside its statement; changes apply to its next batch.

  add      add a rule, or replace the router's rule at --position
  list     list rules in evaluation order
  remove   remove the rule at a position
  replay   send the router's no-route dead letters through its rules again
           (after adding a rule or declaring a queue)

Run 'postbox route SUBCOMMAND --help' for its flags.`

func (c *cli) route(ctx context.Context, args []string) error {
	top := newFlags("route", "postbox route add|list|remove|replay [flags]", routeHelp)
	if len(args) > 0 {
		switch args[0] {
		case "add":
			return c.routeAdd(ctx, args[1:])
		case "list":
			return c.routeList(ctx, args[1:])
		case "remove":
			return c.routeRemove(ctx, args[1:])
		case "replay":
			return c.routeReplay(ctx, args[1:])
		}
	}
	if len(args) == 0 {
		return top.usageErr("route: want a subcommand: add, list, remove or replay")
	}
	if _, err := top.parse(c.stdout, args); err != nil {
		return err // --help, or a bad flag
	}
	return top.usageErr("route: unknown subcommand %q: want add, list, remove or replay", args[0])
}

// checkRouterFlag validates --router before anything connects.
func checkRouterFlag(f *flags, router string) error {
	if router == "" {
		return f.usageErr("%s: --router is required", f.Name())
	}
	if err := postbox.ValidateName("--router", router); err != nil {
		return f.invalidErr(err)
	}
	return nil
}

func (c *cli) routeAdd(ctx context.Context, args []string) error {
	f := newFlags("route add", "postbox route add --router R --queue Q [--type T] [--predicate JSONPATH] [--position N] [flags]", `
Add a rule to router R that sends what it matches to queue Q. Without
--position the rule goes after the router's last; with it, it replaces the
rule at that position if there is one. The lowest matching position wins.

--type matches messages of exactly that type. --predicate is a SQL/JSON path
over the JSON payload, as subscription filters: a predicate decides by its
value ('$.total >= 1000'), any other path matches when it yields an item
('$.items ? (@.sku == "KB-01")'). Payloads that are not JSON match no
predicate. A rule with neither is the default route.

A router's name may not be a queue's or a topic subscriber's; Q may not be
a router nor a topic subscriber, and need not be declared yet.`)
	g := f.common()
	router := f.String("router", "", "router name (required)")
	queue := f.String("queue", "", "queue the rule sends to (required)")
	typ := f.String("type", "", "match messages of exactly this type")
	predicate := f.String("predicate", "", "SQL/JSON path the payload must match")
	position := f.Int("position", 0, fmt.Sprintf("position of the rule, 1 to %d (default: after the last)", dispatcher.MaxRoutePosition))
	pos, err := f.parse(c.stdout, args)
	if err != nil {
		return err
	}
	if err := f.noArgs(pos); err != nil {
		return err
	}
	if err := checkRouterFlag(f, *router); err != nil {
		return err
	}
	if *queue == "" {
		return f.usageErr("route add: --queue is required")
	}
	if *position < 0 || *position > dispatcher.MaxRoutePosition {
		return f.usageErr("--position %d: want 1 to %d", *position, dispatcher.MaxRoutePosition)
	}
	if _, err := c.logger(f, g); err != nil {
		return err
	}
	pool, err := c.open(ctx, f, g, poolOptions{app: "postbox-admin"})
	if err != nil {
		return err
	}
	defer pool.Close()
	r, err := dispatcher.AddRoute(ctx, pool, dispatcher.Route{Router: *router, Position: *position, Queue: *queue,
		Type: *typ, Predicate: *predicate})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.stdout, "added route %s/%d -> %s\n", r.Router, r.Position, r.Queue)
	return err
}

// routeJSON is one rule as `postbox route list --json` prints it.
type routeJSON struct {
	Router    string    `json:"router"`
	Position  int       `json:"position"`
	Queue     string    `json:"queue"`
	Type      string    `json:"type,omitempty"`
	Predicate string    `json:"predicate,omitempty"`
	CreatedAt time.Time `json:"created_at"`
}

func (c *cli) routeList(ctx context.Context, args []string) error {
	f := newFlags("route list", "postbox route list [--router R] [flags]", `
List routing rules in evaluation order: per router, lowest position first.`)
	g := f.common()
	router := f.String("router", "", "only this router's rules")
	asJSON := f.Bool("json", false, "print JSON instead of a table")
	pos, err := f.parse(c.stdout, args)
	if err != nil {
		return err
	}
	if err := f.noArgs(pos); err != nil {
		return err
	}
	if *router != "" {
		if err := checkRouterFlag(f, *router); err != nil {
			return err
		}
	}
	if _, err := c.logger(f, g); err != nil {
		return err
	}
	pool, err := c.open(ctx, f, g, poolOptions{app: "postbox-admin"})
	if err != nil {
		return err
	}
	defer pool.Close()
	routes, err := dispatcher.Routes(ctx, pool, *router)
	if err != nil {
		return err
	}
	out := make([]routeJSON, len(routes))
	for i, r := range routes {
		out[i] = routeJSON{Router: r.Router, Position: r.Position, Queue: r.Queue, Type: r.Type,
			Predicate: r.Predicate, CreatedAt: r.CreatedAt}
	}
	if *asJSON {
		return writeJSON(c.stdout, out)
	}
	if len(out) == 0 {
		_, err := fmt.Fprintln(c.stdout, "no routes")
		return err
	}
	return writeTable(c.stdout, func(w io.Writer) {
		fmt.Fprintln(w, "ROUTER\tPOSITION\tTYPE\tPREDICATE\tQUEUE")
		for _, r := range out {
			typ, predicate := r.Type, r.Predicate
			if typ == "" && predicate == "" {
				typ, predicate = "(default)", ""
			}
			fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\n", r.Router, r.Position, cell(typ, 60), cell(predicate, 120), r.Queue)
		}
	})
}

func (c *cli) routeRemove(ctx context.Context, args []string) error {
	f := newFlags("route remove", "postbox route remove --router R --position N [flags]", `
Remove the rule at position N of router R (see postbox route list).
Messages already relayed stay where they went.`)
	g := f.common()
	router := f.String("router", "", "router name (required)")
	position := f.Int("position", 0, "position of the rule (required)")
	pos, err := f.parse(c.stdout, args)
	if err != nil {
		return err
	}
	if err := f.noArgs(pos); err != nil {
		return err
	}
	if err := checkRouterFlag(f, *router); err != nil {
		return err
	}
	if *position < 1 || *position > dispatcher.MaxRoutePosition {
		return f.usageErr("route remove: --position is required, 1 to %d", dispatcher.MaxRoutePosition)
	}
	if _, err := c.logger(f, g); err != nil {
		return err
	}
	pool, err := c.open(ctx, f, g, poolOptions{app: "postbox-admin"})
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := dispatcher.RemoveRoute(ctx, pool, *router, *position); err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.stdout, "removed route %s/%d\n", *router, *position)
	return err
}

func (c *cli) routeReplay(ctx context.Context, args []string) error {
	f := newFlags("route replay", "postbox route replay --router R [--id ID]... [flags]", `
Send the no-route dead letters of router R (all, or those with the given
IDs) through its rules again: each goes back into the outbox as it was sent,
and the relay applies the rules as they are now. Each is recorded in
postbox.replays. A letter that still finds no route dies again. (postbox dlq
replay would hand a router's letters to a subscriber of the router's name,
which does not exist.)`)
	g := f.common()
	router := f.String("router", "", "router name (required)")
	var ids idList
	f.Var(&ids, "id", "only this message `ID` (repeatable, or comma-separated)")
	pos, err := f.parse(c.stdout, args)
	if err != nil {
		return err
	}
	if err := f.noArgs(pos); err != nil {
		return err
	}
	if err := checkRouterFlag(f, *router); err != nil {
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
	n, err := dispatcher.Reroute(ctx, pool, *router, ids...)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(c.stdout, "rerouted %d dead letters of %s\n", n, *router)
	return err
}
