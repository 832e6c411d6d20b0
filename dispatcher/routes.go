package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/internal/db"
	"github.com/postbox-dev/postbox/internal/invalid"
)

// Route is a content-based routing rule. A message sent point-to-point
// (outbox.Send) to a router's name goes to exactly one queue: that of the
// router's first rule, by Position, whose conditions the message meets. A
// rule without conditions is the router's default route. When no rule
// matches, or the chosen queue is not declared, the message becomes a
// dead letter of the router with LastError "no-route" (the dead letter
// channel); Reroute sends such letters through the router again.
//
// The relay evaluates the rules inside its statement: payloads never
// travel through Go. Rules are read by every relay batch, so a change
// applies to the next batch.
type Route struct {
	// Router is the name messages are sent to. It must match
	// postbox.NamePattern and may not be the name of a declared queue or
	// topic subscriber.
	Router string
	// Position orders the router's rules: the lowest matching one wins.
	// AddRoute with Position 0 appends the rule after the router's last.
	Position int
	// Queue receives the messages the rule matches. It need not be
	// declared yet (until it is, its messages are no-route dead letters of
	// the router), but it may not be a topic subscriber nor a router.
	Queue string
	// Type, if set, matches messages of exactly this type.
	Type string
	// Predicate, if set, is a SQL/JSON path over the JSON payload, read as
	// Subscription.Filter is: "$.total >= 100" decides by its value,
	// "$.items ? (@.sku == \"KB-01\")" matches when it yields an item.
	// Payloads that are not JSON match no predicate.
	Predicate string
	// CreatedAt is when the rule was added or last replaced.
	CreatedAt time.Time
}

// MaxRoutePosition bounds Route.Position.
const MaxRoutePosition = 1_000_000

// maxTypeBytes is postbox's limit on a message type (postbox.Limits).
const maxTypeBytes = 200

// AddRoute adds the rule r, replacing the router's rule at r.Position if
// there is one; with Position 0 it appends r after the router's last rule.
// It returns the rule as stored, with its position. Every field is checked
// before anything is written; a name that clashes (the router is a declared
// subscriber or the target of a rule, the queue is a topic subscriber or a
// router) is an ErrKindConflict.
func AddRoute(ctx context.Context, dbtx postbox.DBTX, r Route) (Route, error) {
	if err := r.check(); err != nil {
		return Route{}, err
	}
	var predicate *string
	if r.Predicate != "" {
		if err := checkFilter(ctx, dbtx, "Route.Predicate", r.Predicate); err != nil {
			return Route{}, err
		}
		predicate = &r.Predicate
	}
	var typeName *string
	if r.Type != "" {
		typeName = &r.Type
	}
	var position *int32
	if r.Position != 0 {
		p := int32(r.Position)
		position = &p
	}
	q := db.New(dbtx)
	// An append that loses a race for its position returns no row and
	// tries again; so does one whose check below finds nothing in its way.
	for range 5 {
		if err := checkRouteNames(ctx, q, r.Router, r.Queue); err != nil {
			return Route{}, err
		}
		row, err := q.PutRoute(ctx, db.PutRouteParams{
			Router: r.Router, Position: position, Queue: r.Queue, TypeName: typeName, Predicate: predicate,
		})
		if errors.Is(err, pgx.ErrNoRows) {
			continue
		}
		if err != nil {
			return Route{}, fmt.Errorf("dispatcher: add route %s -> %s: %w", r.Router, r.Queue, err)
		}
		r.Position, r.CreatedAt = int(row.Position), row.CreatedAt
		return r, nil
	}
	return Route{}, fmt.Errorf("dispatcher: add route %s -> %s: the router's rules keep changing; try again", r.Router, r.Queue)
}

// check validates what can be checked without the database.
func (r Route) check() error {
	if err := postbox.ValidateName("Route.Router", r.Router); err != nil {
		return err
	}
	if err := postbox.ValidateName("Route.Queue", r.Queue); err != nil {
		return err
	}
	switch {
	case r.Queue == r.Router:
		return invalid.Errorf("Route.Queue", "%q is the router itself", r.Queue)
	case r.Position < 0 || r.Position > MaxRoutePosition:
		return invalid.Errorf("Route.Position", "%d, want 1 to %d (or 0 to append)", r.Position, MaxRoutePosition)
	case len(r.Type) > maxTypeBytes:
		return invalid.Errorf("Route.Type", "%d bytes, more than %d", len(r.Type), maxTypeBytes)
	case !utf8.ValidString(r.Type) || strings.IndexByte(r.Type, 0) >= 0:
		return invalid.Errorf("Route.Type", "not valid UTF-8 text without NUL bytes")
	}
	return nil
}

// checkRouteNames reports what keeps router -> queue from being a rule.
func checkRouteNames(ctx context.Context, q *db.Queries, router, queue string) error {
	c, err := q.RouteNameConflicts(ctx, db.RouteNameConflictsParams{Router: router, Queue: queue})
	if err != nil {
		return fmt.Errorf("dispatcher: add route %s -> %s: %w", router, queue, err)
	}
	switch {
	case c.RouterDeclared:
		return fmt.Errorf("%w: router %q is a declared subscriber; a router needs a name of its own", ErrKindConflict, router)
	case c.RouterIsTarget:
		return fmt.Errorf("%w: router %q is the queue of another router's rule; rules do not chain", ErrKindConflict, router)
	case c.QueueIsRouter:
		return fmt.Errorf("%w: queue %q is a router; rules do not chain", ErrKindConflict, queue)
	case c.QueueKind != "" && c.QueueKind != KindQueue:
		return fmt.Errorf("%w: %q is a topic subscriber, not a queue", ErrKindConflict, queue)
	}
	return nil
}

// IsRouter reports whether name has routing rules. A queue or topic
// subscriber must not take a router's name: AddRoute refuses a router named
// like a subscriber, and DeclareQueue, DeclareSubscriber and Subscribe
// refuse a router's name (ErrKindConflict).
func IsRouter(ctx context.Context, dbtx postbox.DBTX, name string) (bool, error) {
	return isRouter(ctx, db.New(dbtx), name)
}

func isRouter(ctx context.Context, q *db.Queries, name string) (bool, error) {
	is, err := q.IsRouter(ctx, name)
	if err != nil {
		return false, fmt.Errorf("dispatcher: is %q a router: %w", name, err)
	}
	return is, nil
}

// Routes lists the rules of router, or of every router when router is "",
// in evaluation order.
func Routes(ctx context.Context, dbtx postbox.DBTX, router string) ([]Route, error) {
	var filter *string
	if router != "" {
		if err := postbox.ValidateName("router", router); err != nil {
			return nil, err
		}
		filter = &router
	}
	rows, err := db.New(dbtx).ListRoutes(ctx, filter)
	if err != nil {
		return nil, fmt.Errorf("dispatcher: list routes: %w", err)
	}
	out := make([]Route, len(rows))
	for i, r := range rows {
		out[i] = Route{Router: r.Router, Position: int(r.Position), Queue: r.Queue, Type: r.TypeName,
			Predicate: r.Predicate, CreatedAt: r.CreatedAt}
	}
	return out, nil
}

// RemoveRoute removes the router's rule at position. Messages the relay
// moved already stay where they went.
func RemoveRoute(ctx context.Context, dbtx postbox.DBTX, router string, position int) error {
	if err := postbox.ValidateName("router", router); err != nil {
		return err
	}
	if position < 1 || position > MaxRoutePosition {
		return invalid.Errorf("position", "%d, want 1 to %d", position, MaxRoutePosition)
	}
	n, err := db.New(dbtx).DeleteRoute(ctx, db.DeleteRouteParams{Router: router, Position: int32(position)})
	if err != nil {
		return fmt.Errorf("dispatcher: remove route %s/%d: %w", router, position, err)
	}
	if n == 0 {
		return fmt.Errorf("%w: route %s/%d", ErrNotFound, router, position)
	}
	return nil
}

// Reroute sends the router's no-route dead letters through the router
// again, all of them or those with the given IDs, and returns how many:
// each goes back into the outbox as the send it was, so the relay applies
// the rules as they are now (a rule added since, a queue declared since).
// Each is recorded in postbox.replays and stamped with x-replayed-at and
// x-replay-count. A letter that still finds no route dies again.
//
// Use it rather than dlq.Replay for a router's letters: the router is no
// subscriber, so dlq.Replay would make them deliveries that no consumer
// reads.
func Reroute(ctx context.Context, dbtx postbox.DBTX, router string, ids ...uuid.UUID) (int, error) {
	if err := postbox.ValidateName("router", router); err != nil {
		return 0, err
	}
	var only []uuid.UUID
	if len(ids) > 0 {
		only = ids
	}
	n, err := db.New(dbtx).RerouteDeadLetters(ctx, db.RerouteDeadLettersParams{Router: router, MessageIds: only})
	if err != nil {
		return 0, fmt.Errorf("dispatcher: reroute %s: %w", router, err)
	}
	return int(n), nil
}
