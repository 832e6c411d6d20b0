package main

import (
	"context"
	"strings"
	"testing"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/pgtest"
	"github.com/postbox-dev/postbox/outbox"
)

func TestRouteCommands(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url := pgtest.URL(t)
	pool := openPool(t, url)
	db := []string{"POSTBOX_DATABASE_URL=" + url}

	if out := runOK(t, url, "route", "add", "--router", "checkout", "--queue", "refunds", "--type", "refund.v1"); !strings.Contains(out, "added route checkout/1 -> refunds") {
		t.Errorf("route add printed %q", out)
	}
	runOK(t, url, "route", "add", "--router", "checkout", "--queue", "big-orders", "--predicate", "$.total >= 1000")
	runOK(t, url, "route", "add", "--router", "checkout", "--queue", "orders", "--position", "10")
	var routes []routeJSON
	runJSON(t, url, &routes, "route", "list")
	if len(routes) != 3 || routes[0].Type != "refund.v1" || routes[1].Position != 2 || routes[1].Predicate == "" ||
		routes[2].Position != 10 || routes[2].Queue != "orders" || routes[2].Type != "" {
		t.Fatalf("route list --json = %+v", routes)
	}
	if out := runOK(t, url, "route", "list", "--router", "checkout"); !strings.Contains(out, "(default)") || !strings.Contains(out, "PREDICATE") {
		t.Errorf("route list table:\n%s", out)
	}
	if out := runOK(t, url, "route", "list", "--router", "other"); !strings.Contains(out, "no routes") {
		t.Errorf("route list of a router without rules printed %q", out)
	}

	// A message no rule takes is a dead letter of the router until a rule
	// takes it and the letters are sent through the rules again.
	runOK(t, url, "route", "remove", "--router", "checkout", "--position", "10")
	if err := dispatcher.DeclareQueue(ctx, pool, "orders", dispatcher.Options{}); err != nil {
		t.Fatal(err)
	}
	msg := &postbox.Message{Topic: "checkout", Type: "order.v1", Payload: []byte(`{"total": 5}`)}
	if err := outbox.Send(ctx, pool, msg); err != nil {
		t.Fatal(err)
	}
	pgtest.Drain(t, ctx, pool)
	if n := dead(t, pool, "checkout"); n != 1 {
		t.Fatalf("dead letters of checkout: %d, want 1", n)
	}
	runOK(t, url, "route", "add", "--router", "checkout", "--queue", "orders")
	if out := runOK(t, url, "route", "replay", "--router", "checkout", "--id", msg.ID.String()); !strings.Contains(out, "rerouted 1 dead letters of checkout") {
		t.Errorf("route replay printed %q", out)
	}
	pgtest.Drain(t, ctx, pool)
	if n := pgtest.Count(t, ctx, pool, `SELECT count(*) FROM postbox.inbox WHERE subscriber = 'orders' AND message_id = $1`, msg.ID); n != 1 || dead(t, pool, "checkout") != 0 {
		t.Errorf("after route replay: %d deliveries to orders, %d dead letters; want 1 and 0", n, dead(t, pool, "checkout"))
	}

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"route"}, 2, "want a subcommand"},
		{[]string{"route", "frob"}, 2, `unknown subcommand "frob"`},
		{[]string{"route", "add", "--queue", "q"}, 2, "--router is required"},
		{[]string{"route", "add", "--router", "r"}, 2, "--queue is required"},
		{[]string{"route", "add", "--router", "Bad!", "--queue", "q"}, 2, "postbox: invalid --router"},
		{[]string{"route", "add", "--router", "r", "--queue", "q", "--position", "-3"}, 2, "--position -3"},
		{[]string{"route", "add", "--router", "r", "--queue", "q", "--predicate", "$$ nope"}, 2, "postbox: invalid Route.Predicate"},
		{[]string{"route", "add", "--router", "orders", "--queue", "q"}, 1, "is a declared subscriber"},
		{[]string{"route", "remove", "--router", "checkout"}, 2, "--position is required"},
		{[]string{"route", "remove", "--router", "checkout", "--position", "99"}, 1, "not found"},
		{[]string{"route", "replay"}, 2, "--router is required"},
		{[]string{"route", "replay", "--router", "r", "--id", "nope"}, 2, "not a message ID"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			res := run(t, db, tc.args...)
			if res.code != tc.code || !strings.Contains(res.stderr, tc.want) {
				t.Errorf("postbox %s: exit %d, stderr %q; want %d and %q", strings.Join(tc.args, " "), res.code, res.stderr, tc.code, tc.want)
			}
		})
	}
	for _, args := range [][]string{{"route", "--help"}, {"route", "add", "--help"}, {"route", "list", "--help"},
		{"route", "remove", "--help"}, {"route", "replay", "--help"}} {
		if res := run(t, nil, args...); res.code != 0 || !strings.Contains(res.stdout, "usage: postbox route") {
			t.Errorf("postbox %s: exit %d, stdout %q", strings.Join(args, " "), res.code, res.stdout)
		}
	}
}
