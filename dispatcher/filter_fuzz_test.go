package dispatcher_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/pgtest"
)

// FuzzSubscribeFilter runs Subscribe's filter check against a real
// PostgreSQL (a few hundred executions a second, not millions: the parser
// is PostgreSQL's jsonpath). A filter is accepted or rejected as a
// *postbox.ValidationError of field Subscription.Filter, never with another error, and
// the caller's transaction stays usable either way. An accepted filter
// never makes postbox.payload_matches fail, for any payload: that would
// fail the relay statement at this row.
//
//	go test -fuzz FuzzSubscribeFilter ./dispatcher/
func FuzzSubscribeFilter(f *testing.F) {
	pool := pgtest.Pool(f, 2)
	for _, c := range []struct{ filter, payload string }{
		{"$.totalAmount >= 10000", `{"totalAmount": 12000}`},
		{"$.totalAmount ? (@ >= 10000)", `{"totalAmount": 5}`},
		{`$.region == "eu"`, `{"region": "eu"}`},
		{"$.seq % 3 != 0", `{"seq": 0}`},
		{`$.a ? (@ like_regex "^x.*" flag "i")`, `{"a": "Xy"}`},
		{`$.a ? (@ like_regex "(")`, `{"a": "x"}`},
		{"strict $.a.b", `{"a": 1}`},
		{"$.a / 0", `{"a": 1}`},
		{"$.a.datetime()", `{"a": "not a date"}`},
		{"$.a.double()", `{"a": "x"}`},
		{"$.**", `[[[[[[[[[[1]]]]]]]]]]`},
		{"$[last]", `[]`},
		{"$ ? (", `{}`},
		{"", `{}`},
		{"$.a\x00", `{}`},
		{strings.Repeat("(", 2000) + "$" + strings.Repeat(")", 2000), `{}`},
		{"$.a", "not json"},
		{"$.a", "\xff\xfe"},
		{"$0", `{}`},
		{"$.total ? (@ > $limit)", `{"total": 3}`},
		{`$"x y"`, `{}`},
		{`$.a == "$x \" $y"`, `{"a": "$x \" $y"}`},
	} {
		f.Add(c.filter, []byte(c.payload))
	}
	f.Fuzz(func(t *testing.T, filter string, payload []byte) {
		ctx := context.Background()
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		err = dispatcher.Subscribe(ctx, tx, dispatcher.Subscription{Subscriber: "fuzz", Topic: "fuzz.t", Filter: filter})
		if err != nil {
			var ve *postbox.ValidationError
			if !errors.As(err, &ve) || ve.Field != "Subscription.Filter" || !errors.Is(err, postbox.ErrInvalid) {
				t.Fatalf("Subscribe with filter %q: %v; want nil or a *postbox.ValidationError of field Subscription.Filter", filter, err)
			}
			if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
				t.Fatalf("the transaction is unusable after filter %q was rejected: %v", filter, err)
			}
			return
		}
		if len(filter) > 4096 || strings.IndexByte(filter, 0) >= 0 {
			t.Fatalf("Subscribe accepted filter %q", filter)
		}
		if filter == "" {
			return
		}
		var matched bool
		if err := tx.QueryRow(ctx, `SELECT postbox.payload_matches($1, $2::jsonpath)`, payload, filter).Scan(&matched); err != nil {
			t.Fatalf("filter %q, accepted by Subscribe, fails on payload %q: %v", filter, payload, err)
		}
	})
}
