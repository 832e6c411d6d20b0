package headers

import (
	"encoding/json"
	"maps"
	"testing"
	"unicode/utf8"
)

// FuzzDecode: any column value decodes without panicking; a JSON object
// always decodes (only a non-object is an error); string values come back
// as they are; and what Decode returns encodes and decodes to itself.
//
//	go test -fuzz FuzzDecode ./internal/headers/
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		``, `null`, `{}`, `[]`, `[1]`, `"x"`, `1`, `{"a":"b"}`,
		`{"correlation-id": "c-1", "x-retry-count": "3"}`,
		`{"n": 3, "s": "x", "o": {"a": 1}, "l": [1, "2"], "t": true, "z": null}`,
		`{"a": "\u00e9\ud83d\ude00", "b": "\"quoted\"", "c": "line\nbreak"}`,
		`{"a":"x","a":"y"}`, ` {"a" : "b"} `, `{"a":}`, `{"a":"b"`, "{\"\xff\":\"\xfe\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := Decode(b)
		var v any
		parsed := json.Unmarshal(b, &v) == nil
		isObject := parsed && isMap(v)
		switch {
		case len(b) == 0 || parsed && v == nil:
			// SQL NULL or JSON null (jsonb prints it without spaces; by
			// hand it may have some): no headers.
			if len(h) != 0 || err != nil {
				t.Fatalf("Decode(%q) = %v, %v; want no headers", b, h, err)
			}
			return
		case isObject && err != nil:
			t.Fatalf("Decode(%q): %v, but it is a JSON object", b, err)
		case !isObject && err == nil:
			t.Fatalf("Decode(%q) = %v, nil; want an error for a value that is not a JSON object", b, h)
		case err != nil:
			return
		}
		// String values are kept as they are.
		var strs map[string]string
		if json.Unmarshal(b, &strs) == nil && !maps.Equal(h, strs) {
			t.Fatalf("Decode(%q) = %q, want the object's strings %q", b, h, strs)
		}
		// jsonb is valid UTF-8; from other bytes, a value kept as its JSON
		// text keeps them.
		for k, s := range h {
			if utf8.Valid(b) && (!utf8.ValidString(k) || !utf8.ValidString(s)) {
				t.Fatalf("Decode(%q): %q: %q is not valid UTF-8", b, k, s)
			}
		}
		if !utf8.Valid(b) {
			return // Encode would replace what is not UTF-8
		}
		// Stable: what Decode returns is what a round trip returns.
		enc, err := Encode(h)
		if err != nil {
			t.Fatalf("Encode(Decode(%q)): %v", b, err)
		}
		again, err := Decode(enc)
		if err != nil {
			t.Fatalf("Decode(Encode(Decode(%q))) = %v", b, err)
		}
		if len(h) == 0 {
			if again != nil {
				t.Fatalf("empty headers of %q encode to %q, which decodes to %v; want nil", b, enc, again)
			}
			return
		}
		if !maps.Equal(h, again) {
			t.Fatalf("Decode(%q) = %q; after a round trip %q", b, h, again)
		}
	})
}

func isMap(v any) bool {
	_, ok := v.(map[string]any)
	return ok
}

// FuzzRoundTrip: headers of valid UTF-8 survive Encode and Decode exactly,
// and the encoding is a JSON object of strings.
//
//	go test -fuzz FuzzRoundTrip ./internal/headers/
func FuzzRoundTrip(f *testing.F) {
	f.Add("correlation-id", "c-1", "x-retry-count", "3")
	f.Add("", "", "a", "")
	f.Add("content-type", "application/json; charset=utf-8", "traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
	f.Add("k", "<&>\u2028\u2029", "é", "\"\\\n\t")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		for _, s := range []string{k1, v1, k2, v2} {
			if !utf8.ValidString(s) {
				return // Validate rejects it before it gets here
			}
		}
		in := map[string]string{k1: v1, k2: v2}
		b, err := Encode(in)
		if err != nil {
			t.Fatalf("Encode(%q): %v", in, err)
		}
		var strs map[string]string
		if err := json.Unmarshal(b, &strs); err != nil || !maps.Equal(strs, in) {
			t.Fatalf("Encode(%q) = %q, not a JSON object of those strings (%v)", in, b, err)
		}
		out, err := Decode(b)
		if err != nil || !maps.Equal(out, in) {
			t.Fatalf("Decode(Encode(%q)) = %q, %v", in, out, err)
		}
	})
}
