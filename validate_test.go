package postbox

import (
	"strings"
	"testing"
)

// The loops that validate names must accept exactly what the documented
// patterns accept.
func TestNameLoopsAgreeWithPatterns(t *testing.T) {
	names := []string{"", "a", "order", "order.created", "order.created.v1", "a_b-c.d9", "0", "9.z",
		"Order", "order.", ".order", "a..b", "_a", "-a", "a._b", "a.-b", "a b", "a/b", "ä", "a.b.", "a*", "#",
		"order_", "a-", strings.Repeat("a", 300)}
	for _, n := range names {
		if got, want := validName(n), nameRE.MatchString(n); got != want {
			t.Errorf("validName(%q) = %v, pattern says %v", n, got, want)
		}
	}
	headers := []string{"", "a", "content-type", "X-Trace.Id_1", "traceparent", "-a", ".a", "_a", "a b",
		"a:b", "größe", "A", strings.Repeat("h", 128), strings.Repeat("h", 129)}
	for _, h := range headers {
		if got, want := validHeaderName(h), headerNameRE.MatchString(h); got != want {
			t.Errorf("validHeaderName(%q) = %v, pattern says %v", h, got, want)
		}
	}
}

// FuzzNameLoops holds the loops equal to the patterns on any input:
// go test -fuzz FuzzNameLoops .
func FuzzNameLoops(f *testing.F) {
	for _, s := range []string{"order.created", "a..b", "X-Id", "_x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if validName(s) != nameRE.MatchString(s) {
			t.Fatalf("validName(%q) disagrees with %s", s, NamePattern)
		}
		if validHeaderName(s) != headerNameRE.MatchString(s) {
			t.Fatalf("validHeaderName(%q) disagrees with %s", s, headerNameRE)
		}
	})
}
