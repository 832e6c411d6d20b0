package dispatcher_test

import (
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
)

// FuzzPatternRegexp holds PatternRegexp to a reference written from the
// documentation of Subscription.Topic: it accepts exactly the patterns the
// reference accepts (errors are *postbox.ValidationError for "pattern"), and
// its expression matches a topic exactly when the reference matcher does.
// Topics come from the fuzzer and from the pattern itself, its wildcards
// filled in by the bits of shape, so that matches are common.
//
//	go test -fuzz FuzzPatternRegexp ./dispatcher/
func FuzzPatternRegexp(f *testing.F) {
	for _, c := range patternCases {
		f.Add(c.pattern, c.topic, uint64(0))
	}
	for _, p := range []string{"#", "*", "#.#", "*.#.*", "a.#.b.#.c", "#.a.#", "a.*.#.z", "_x.*", "-.#",
		"order.**", "a..b", ".", "", "order.", "Order.*", "ord#er", "a.*\x00", strings.Repeat("#.", 99) + "#"} {
		f.Add(p, "a.b.c", uint64(0x5a5a5a5a))
	}
	f.Fuzz(func(t *testing.T, pattern, topic string, shape uint64) {
		re, err := dispatcher.PatternRegexp(pattern)
		ok, wild := refValid(pattern)
		if (err == nil) != ok {
			t.Fatalf("PatternRegexp(%q) error = %v; the reference says valid = %v", pattern, err, ok)
		}
		if err != nil {
			var ve *postbox.ValidationError
			if !errors.As(err, &ve) || ve.Field != "pattern" || !errors.Is(err, postbox.ErrInvalid) {
				t.Fatalf("PatternRegexp(%q) error = %#v, want a *postbox.ValidationError of field pattern", pattern, err)
			}
			return
		}
		if (re == "") == wild {
			t.Fatalf("PatternRegexp(%q) = %q: want an expression exactly for a pattern with wildcards", pattern, re)
		}
		var rx *regexp.Regexp
		if re != "" {
			rx, err = regexp.Compile(re)
			if err != nil {
				t.Fatalf("PatternRegexp(%q) = %q, which does not compile: %v", pattern, re, err)
			}
			if !strings.HasPrefix(re, "^") || !strings.HasSuffix(re, "$") {
				t.Fatalf("PatternRegexp(%q) = %q is not anchored", pattern, re)
			}
		}
		for _, tp := range []string{topic, fill(pattern, shape), fill(pattern, ^shape)} {
			if postbox.ValidateName("topic", tp) != nil {
				continue // no such topic can be published
			}
			want := refMatch(strings.Split(pattern, "."), strings.Split(tp, "."))
			got := tp == pattern
			if rx != nil {
				got = rx.MatchString("." + tp)
			}
			if got != want {
				t.Fatalf("pattern %q (%q) on topic %q = %v, the reference says %v", pattern, re, tp, got, want)
			}
		}
	})
}

// refValid is the documented rule: 1 to 200 characters of dot-separated
// segments, each '*', '#' or of [a-z0-9_-]; without a wildcard, a valid
// topic name.
func refValid(pattern string) (ok, wild bool) {
	if len(pattern) < 1 || len(pattern) > 200 {
		return false, false
	}
	for _, s := range strings.Split(pattern, ".") {
		if s == "*" || s == "#" {
			wild = true
			continue
		}
		if s == "" {
			return false, false
		}
		for _, c := range []byte(s) {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
				return false, false
			}
		}
	}
	if !wild {
		return postbox.ValidateName("topic", pattern) == nil, false
	}
	return true, true
}

// refMatch matches topic segments against pattern segments: '*' is exactly
// one segment, '#' zero or more, anything else itself. Dynamic programming,
// so that patterns of many '#' stay linear in the topic.
func refMatch(pat, top []string) bool {
	// m[j]: pat[i:] matches top[j:], computed for i from the end.
	m := make([]bool, len(top)+1)
	m[len(top)] = true
	for i := len(pat) - 1; i >= 0; i-- {
		next := make([]bool, len(top)+1)
		for j := len(top); j >= 0; j-- {
			switch pat[i] {
			case "#":
				next[j] = m[j] || (j < len(top) && next[j+1])
			case "*":
				next[j] = j < len(top) && m[j+1]
			default:
				next[j] = j < len(top) && top[j] == pat[i] && m[j+1]
			}
		}
		m = next
	}
	return m[0]
}

// fill makes a topic from pattern: each '*' becomes a segment, each '#'
// zero, one or two segments, chosen by the bits of shape.
func fill(pattern string, shape uint64) string {
	var out []string
	for _, s := range strings.Split(pattern, ".") {
		b := shape & 3
		shape = shape>>2 | shape<<62
		switch s {
		case "*":
			out = append(out, []string{"x", "y1", "a", "z-z"}[b])
		case "#":
			out = append(out, [][]string{nil, {"m"}, {"m", "n"}, {"a"}}[b]...)
		default:
			out = append(out, s)
		}
	}
	return strings.Join(out, ".")
}
