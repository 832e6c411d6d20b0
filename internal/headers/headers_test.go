package headers

import (
	"reflect"
	"testing"
)

func TestRoundTripAndForeignValues(t *testing.T) {
	in := map[string]string{"correlation-id": "c-1", "x-retry-count": "3"}
	b, err := Encode(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Decode(b)
	if err != nil || !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip = %v, %v; want %v", out, err, in)
	}
	if b, _ := Encode(nil); b != nil {
		t.Fatalf("Encode(nil) = %q, want nil (SQL NULL)", b)
	}
	got, err := Decode([]byte(`{"n": 3, "s": "x", "o": {"a": 1}}`))
	want := map[string]string{"n": "3", "s": "x", "o": `{"a": 1}`}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("Decode(foreign values) = %v, %v; want %v", got, err, want)
	}
	if _, err := Decode([]byte(`[1]`)); err == nil {
		t.Fatal("Decode of a non-object returned nil error")
	}
}
