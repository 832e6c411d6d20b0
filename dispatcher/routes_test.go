package dispatcher_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/dlq"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
)

// routed returns where the relay put message id: the subscriber of its
// inbox delivery, or "dead:" and the subscriber of its dead letter.
func routed(t *testing.T, pool *pgxpool.Pool, id uuid.UUID) string {
	t.Helper()
	var where string
	err := pool.QueryRow(context.Background(), `
		SELECT coalesce((SELECT string_agg(subscriber, ',' ORDER BY subscriber) FROM postbox.inbox WHERE message_id = $1),
		                (SELECT 'dead:' || subscriber || ':' || last_error FROM postbox.dead_letters WHERE message_id = $1),
		                'nowhere')`, id).Scan(&where)
	if err != nil {
		t.Fatal(err)
	}
	return where
}

// The rules of one router, as the relay applies them: by type, by a JSON
// path over the payload, the default route, no route at all, and a route
// to a queue nobody declared, which a Reroute delivers once it is.
func TestRoutesInTheRelay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 4)
	for _, q := range []string{"refunds", "big-orders", "orders"} {
		if err := dispatcher.DeclareQueue(ctx, pool, q, dispatcher.Options{}); err != nil {
			t.Fatal(err)
		}
	}
	// "checkout" has no default: what no rule takes is a dead letter.
	// "intake" ends with one.
	rules := []dispatcher.Route{
		{Router: "checkout", Type: "refund.v1", Queue: "refunds"},
		{Router: "checkout", Predicate: "$.total >= 1000", Queue: "big-orders"},
		{Router: "checkout", Type: "order.v1", Predicate: `$.country ? (@ == "fr")`, Queue: "orders-fr"},
		{Router: "checkout", Type: "order.v1", Queue: "orders"},
		{Router: "intake", Predicate: "$.urgent == true", Queue: "big-orders"},
		{Router: "intake", Queue: "orders"},
	}
	for i, r := range rules {
		got, err := dispatcher.AddRoute(ctx, pool, r)
		if err != nil {
			t.Fatalf("AddRoute %d: %v", i, err)
		}
		if want := i%4 + 1; r.Router == "checkout" && got.Position != want {
			t.Errorf("rule %d appended at position %d, want %d", i, got.Position, want)
		}
	}

	tests := []struct {
		name, router, typ, payload, want string
	}{
		{"type rule", "checkout", "refund.v1", `{"total": 5000}`, "refunds"},
		{"JSON path rule before a later type rule", "checkout", "order.v1", `{"total": 1500}`, "big-orders"},
		{"type and path together", "checkout", "order.v1", `{"total": 10, "country": "fr"}`, "dead:checkout:no-route"},
		{"type rule after the path rules", "checkout", "order.v1", `{"total": 10, "country": "de"}`, "orders"},
		{"no rule matches", "checkout", "invoice.v1", `{"total": 10}`, "dead:checkout:no-route"},
		{"not JSON matches no path", "checkout", "invoice.v1", `total=5000`, "dead:checkout:no-route"},
		{"path rule of another router", "intake", "anything", `{"urgent": true}`, "big-orders"},
		{"default route", "intake", "anything", `{"urgent": false}`, "orders"},
		{"default route, not JSON", "intake", "", `hello`, "orders"},
	}
	ids := make([]uuid.UUID, len(tests))
	for i, tt := range tests {
		msg := &postbox.Message{Topic: tt.router, Type: tt.typ, Key: fmt.Sprintf("k%d", i%3), Payload: []byte(tt.payload)}
		if err := outbox.Send(ctx, pool, msg); err != nil {
			t.Fatal(err)
		}
		ids[i] = msg.ID
	}
	res := pgtest.Drain(t, ctx, pool)
	if res.NoRoute != 3 || res.Delivered != 6 {
		t.Errorf("relay: %+v, want 6 delivered and 3 no-route", res)
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := routed(t, pool, ids[i]); got != tt.want {
				t.Errorf("went to %s, want %s", got, tt.want)
			}
		})
	}

	// The French orders' queue is declared now; the router's letters go
	// through the rules again: that one reaches it, the others die again.
	if err := dispatcher.DeclareQueue(ctx, pool, "orders-fr", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	n, err := dispatcher.Reroute(ctx, pool, "checkout")
	if err != nil || n != 3 {
		t.Fatalf("Reroute = %d, %v; want 3", n, err)
	}
	if res := pgtest.Drain(t, ctx, pool); res.Claimed != 3 || res.Delivered != 1 || res.NoRoute != 2 {
		t.Errorf("relay after Reroute: %+v, want 3 moved, 1 delivered, 2 no-route", res)
	}
	if got := routed(t, pool, ids[2]); got != "orders-fr" {
		t.Errorf("the French order went to %s after Reroute, want orders-fr", got)
	}
	var replayed int
	var header string
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM postbox.replays WHERE subscriber = 'checkout'),
		(SELECT headers->>'x-replay-count' FROM postbox.inbox WHERE message_id = $1)`, ids[2]).Scan(&replayed, &header); err != nil {
		t.Fatal(err)
	}
	if replayed != 3 || header != "1" {
		t.Errorf("replays recorded %d, x-replay-count %q; want 3 and 1", replayed, header)
	}
	// Rerouting by ID takes only those.
	letters, err := dlq.List(ctx, pool, dlq.Filter{Subscriber: "checkout"})
	if err != nil || len(letters) != 2 {
		t.Fatalf("dead letters of checkout: %d, %v; want 2", len(letters), err)
	}
	if n, err := dispatcher.Reroute(ctx, pool, "checkout", letters[0].MessageID); err != nil || n != 1 {
		t.Fatalf("Reroute one = %d, %v", n, err)
	}
	if n, err := dispatcher.Reroute(ctx, pool, "checkout", uuid.New()); err != nil || n != 0 {
		t.Fatalf("Reroute of an unknown ID = %d, %v; want 0", n, err)
	}
}

// Rules are listed in evaluation order, replaced in place, appended after
// the last, and removed one at a time.
func TestRoutesManagement(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 2)
	add := func(r dispatcher.Route) dispatcher.Route {
		t.Helper()
		got, err := dispatcher.AddRoute(ctx, pool, r)
		if err != nil {
			t.Fatalf("AddRoute(%+v): %v", r, err)
		}
		return got
	}
	add(dispatcher.Route{Router: "b", Position: 20, Queue: "q2", Type: "t"})
	add(dispatcher.Route{Router: "b", Position: 10, Queue: "q1", Predicate: "$.x > 1"})
	if got := add(dispatcher.Route{Router: "b", Queue: "q3"}); got.Position != 21 || got.CreatedAt.IsZero() {
		t.Errorf("append = %+v, want position 21", got)
	}
	add(dispatcher.Route{Router: "a", Queue: "q1"})
	add(dispatcher.Route{Router: "b", Position: 20, Queue: "q4"}) // replaces q2

	routes, err := dispatcher.Routes(ctx, pool, "")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range routes {
		got = append(got, fmt.Sprintf("%s/%d:%s[%s|%s]", r.Router, r.Position, r.Queue, r.Type, r.Predicate))
	}
	want := "a/1:q1[|] b/10:q1[|($.\"x\" > 1)] b/20:q4[|] b/21:q3[|]"
	if strings.Join(got, " ") != want {
		t.Errorf("Routes = %s\nwant     %s", strings.Join(got, " "), want)
	}
	if only, err := dispatcher.Routes(ctx, pool, "a"); err != nil || len(only) != 1 {
		t.Errorf("Routes(a) = %+v, %v", only, err)
	}
	if is, err := dispatcher.IsRouter(ctx, pool, "b"); err != nil || !is {
		t.Errorf("IsRouter(b) = %t, %v", is, err)
	}
	if is, err := dispatcher.IsRouter(ctx, pool, "q1"); err != nil || is {
		t.Errorf("IsRouter(q1) = %t, %v", is, err)
	}
	if err := dispatcher.RemoveRoute(ctx, pool, "b", 20); err != nil {
		t.Fatal(err)
	}
	if err := dispatcher.RemoveRoute(ctx, pool, "b", 20); !errors.Is(err, dispatcher.ErrNotFound) {
		t.Errorf("removing it again: %v, want ErrNotFound", err)
	}
	if routes, _ := dispatcher.Routes(ctx, pool, "b"); len(routes) != 2 {
		t.Errorf("b has %d rules after a removal, want 2", len(routes))
	}
}

// Bad rules are refused before anything is written: input errors name the
// field, name clashes are ErrKindConflict.
func TestAddRouteRejects(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 2)
	if err := dispatcher.DeclareQueue(ctx, pool, "work", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	if err := dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: "audit", Topic: "order.#"}); err != nil {
		t.Fatal(err)
	}
	if _, err := dispatcher.AddRoute(ctx, pool, dispatcher.Route{Router: "front", Queue: "work"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		r     dispatcher.Route
		field string // a *postbox.ValidationError for this field, or
		clash bool   // an ErrKindConflict
	}{
		{"bad router name", dispatcher.Route{Router: "Front", Queue: "work"}, "Route.Router", false},
		{"reserved router name", dispatcher.Route{Router: dlq.Relay, Queue: "work"}, "Route.Router", false},
		{"bad queue name", dispatcher.Route{Router: "r", Queue: "a..b"}, "Route.Queue", false},
		{"queue is the router", dispatcher.Route{Router: "r", Queue: "r"}, "Route.Queue", false},
		{"negative position", dispatcher.Route{Router: "r", Queue: "work", Position: -1}, "Route.Position", false},
		{"position too large", dispatcher.Route{Router: "r", Queue: "work", Position: dispatcher.MaxRoutePosition + 1}, "Route.Position", false},
		{"type too long", dispatcher.Route{Router: "r", Queue: "work", Type: strings.Repeat("t", 201)}, "Route.Type", false},
		{"type with NUL", dispatcher.Route{Router: "r", Queue: "work", Type: "a\x00"}, "Route.Type", false},
		{"malformed predicate", dispatcher.Route{Router: "r", Queue: "work", Predicate: "$$ nope"}, "Route.Predicate", false},
		{"router is a queue", dispatcher.Route{Router: "work", Queue: "other"}, "", true},
		{"router is a topic subscriber", dispatcher.Route{Router: "audit", Queue: "work"}, "", true},
		{"queue is a topic subscriber", dispatcher.Route{Router: "r", Queue: "audit"}, "", true},
		{"queue is a router", dispatcher.Route{Router: "r", Queue: "front"}, "", true},
		{"router is a rule's queue", dispatcher.Route{Router: "work2", Queue: "x"}, "", true},
	}
	if _, err := dispatcher.AddRoute(ctx, pool, dispatcher.Route{Router: "side", Queue: "work2"}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := dispatcher.AddRoute(ctx, pool, tt.r)
			var ve *postbox.ValidationError
			switch {
			case tt.clash && !errors.Is(err, dispatcher.ErrKindConflict):
				t.Errorf("err = %v, want ErrKindConflict", err)
			case !tt.clash && (!errors.As(err, &ve) || ve.Field != tt.field || !errors.Is(err, postbox.ErrInvalid)):
				t.Errorf("err = %v, want a validation error of field %q", err, tt.field)
			}
		})
	}
	if routes, err := dispatcher.Routes(ctx, pool, ""); err != nil || len(routes) != 2 {
		t.Errorf("after the refusals: %d rules, %v; want the 2 added", len(routes), err)
	}
	// In a transaction, a refused predicate leaves the transaction usable.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := dispatcher.AddRoute(ctx, tx, dispatcher.Route{Router: "r", Queue: "work", Predicate: "$$"}); !errors.Is(err, postbox.ErrInvalid) {
		t.Fatalf("bad predicate in a tx: %v", err)
	}
	if _, err := dispatcher.AddRoute(ctx, tx, dispatcher.Route{Router: "r", Queue: "work", Predicate: "$.a == 1"}); err != nil {
		t.Fatalf("the transaction after a refused predicate: %v", err)
	}
	if err := dispatcher.RemoveRoute(ctx, pool, "r", 0); !errors.Is(err, postbox.ErrInvalid) {
		t.Errorf("RemoveRoute position 0: %v, want invalid", err)
	}
}

// A router's name stays its own: declaring or subscribing a subscriber of
// that name is a conflict. Its no-route letters replayed with dlq.Replay
// go through its rules again, as with Reroute.
func TestRouterNameAndReplay(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pool := pgtest.Pool(t, 2)
	if _, err := dispatcher.AddRoute(ctx, pool, dispatcher.Route{Router: "front", Queue: "work", Type: "job"}); err != nil {
		t.Fatal(err)
	}
	if err := dispatcher.DeclareQueue(ctx, pool, "front", dispatcher.Options{}); !errors.Is(err, dispatcher.ErrKindConflict) {
		t.Errorf("DeclareQueue with a router's name: %v, want ErrKindConflict", err)
	}
	if err := dispatcher.Subscribe(ctx, pool, dispatcher.Subscription{Subscriber: "front", Topic: "t"}); !errors.Is(err, dispatcher.ErrKindConflict) {
		t.Errorf("Subscribe with a router's name: %v, want ErrKindConflict", err)
	}
	msg := &postbox.Message{Topic: "front", Type: "job", Payload: []byte(`{}`)}
	if err := outbox.Send(ctx, pool, msg); err != nil {
		t.Fatal(err)
	}
	if res := pgtest.Drain(t, ctx, pool); res.NoRoute != 1 {
		t.Fatalf("relay: %+v, want the send to the undeclared queue dead", res)
	}
	if err := dispatcher.DeclareQueue(ctx, pool, "work", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	if n, err := dlq.Replay(ctx, pool, dlq.Filter{Subscriber: "front"}); err != nil || n != 1 {
		t.Fatalf("dlq.Replay = %d, %v; want 1", n, err)
	}
	if res := pgtest.Drain(t, ctx, pool); res.Delivered != 1 {
		t.Errorf("relay after the replay: %+v, want 1 delivered", res)
	}
	if got := routed(t, pool, msg.ID); got != "work" {
		t.Errorf("the replayed send went to %s, want work", got)
	}
}
