package postbox_test

import (
	"errors"
	"maps"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/headers"
)

var namePattern = regexp.MustCompile(postbox.NamePattern)

// FuzzValidateName: a name is valid exactly when it has at most
// MaxNameLength characters and matches NamePattern (the CHECK constraint of
// postbox.outbox says the same); the error names the field; and a valid
// name is also a valid exact topic pattern, matching itself only.
//
//	go test -fuzz FuzzValidateName .
func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"order.created", "a", "0", "a_b-c.d9", "order.", ".order", "a..b", "_a", "-a",
		"a._b", "Order", "ä", "a b", "a.*", "#", strings.Repeat("a", 200), strings.Repeat("a", 201),
		strings.Repeat("a.", 99) + "a", "a\x00", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		err := postbox.ValidateName("subscriber", name)
		want := len(name) <= postbox.MaxNameLength && namePattern.MatchString(name)
		if (err == nil) != want {
			t.Fatalf("ValidateName(%q) = %v; the documented rule says valid = %v", name, err, want)
		}
		if err != nil {
			var ve *postbox.ValidationError
			if !errors.As(err, &ve) || ve.Field != "subscriber" || !errors.Is(err, postbox.ErrInvalid) {
				t.Fatalf("ValidateName(%q) error = %#v, want a *postbox.ValidationError of field subscriber", name, err)
			}
			if !utf8.ValidString(err.Error()) {
				t.Fatalf("ValidateName(%q) error text %q is not valid UTF-8", name, err.Error())
			}
			return
		}
		re, perr := dispatcher.PatternRegexp(name)
		if perr != nil || re != "" {
			t.Fatalf("PatternRegexp(%q) = %q, %v: a valid name is an exact topic pattern", name, re, perr)
		}
	})
}

// FuzzValidateMessage: Limits.Validate never panics, rejects only with a
// *postbox.ValidationError, and what it accepts PostgreSQL can store (valid
// UTF-8, no NUL) and the headers codec carries unchanged.
//
//	go test -fuzz FuzzValidateMessage .
func FuzzValidateMessage(f *testing.F) {
	f.Add("order.created", "customer-1", "content-type", "application/json", "x-b", "", 10)
	f.Add("", "", "", "", "", "", 0)
	f.Add("t\x00", "k\xff", "-bad", "v", "ok", "\x00", 1<<20+1)
	f.Add(strings.Repeat("t", 201), strings.Repeat("k", 1025), strings.Repeat("h", 129), "v", "A.b_c-d", "é", 3)
	f.Fuzz(func(t *testing.T, typ, key, h1, v1, h2, v2 string, payload int) {
		if payload < 0 || payload > 2<<20 {
			return
		}
		msg := &postbox.Message{Topic: "t", Type: typ, Key: key, Payload: make([]byte, payload),
			Headers: map[string]string{h1: v1, h2: v2}}
		err := postbox.Limits{}.Validate(msg)
		if err != nil {
			var ve *postbox.ValidationError
			if !errors.As(err, &ve) || ve.Field == "" || !errors.Is(err, postbox.ErrInvalid) {
				t.Fatalf("Validate error = %#v, want a *postbox.ValidationError naming its field", err)
			}
			return
		}
		texts := []string{typ, key}
		for k, v := range msg.Headers { // h1 == h2 leaves one header
			texts = append(texts, k, v)
		}
		for _, s := range texts {
			if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
				t.Fatalf("Validate accepted %q, which PostgreSQL text cannot hold", s)
			}
		}
		if len(typ) > 200 || len(key) > postbox.DefaultMaxKeyBytes || payload > postbox.DefaultMaxPayloadBytes {
			t.Fatalf("Validate accepted type %d bytes, key %d bytes, payload %d bytes", len(typ), len(key), payload)
		}
		b, err := headers.Encode(msg.Headers)
		if err != nil {
			t.Fatalf("Encode(%q): %v", msg.Headers, err)
		}
		back, err := headers.Decode(b)
		if err != nil || !maps.Equal(back, msg.Headers) {
			t.Fatalf("headers %q came back as %q (%v)", msg.Headers, back, err)
		}
	})
}
