package watermill

import (
	"maps"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/inbox"
)

// roundTrip maps m to a postbox message and back, as a delivery would
// carry it.
func roundTrip(t *testing.T, m *message.Message) (*postbox.Message, *message.Message) {
	t.Helper()
	pm := toPostbox("t", "", m)
	if err := (postbox.Limits{}).Validate(pm); err != nil {
		t.Fatalf("toPostbox(%q, %q) is not a valid message: %v", m.UUID, m.Metadata, err)
	}
	back, err := toWatermill(&inbox.Delivery{Message: *pm})
	if err != nil {
		t.Fatalf("toWatermill: %v", err)
	}
	return pm, back
}

func TestUUIDsRoundTrip(t *testing.T) {
	canonical := uuid.NewString()
	for _, id := range []string{
		canonical,
		"01J9Z3K7Q8R2M4N6P8S0T2V4W6", // a ULID
		"",
		"3F2A1B4C-0D5E-4F60-8A7B-9C0D1E2F3A4B", // upper case: parses, but is not the string postbox would give back
		"{3f2a1b4c-0d5e-4f60-8a7b-9c0d1e2f3a4b}",
		"00000000-0000-0000-0000-000000000000",
		"not a uuid \x00 \xff",
	} {
		pm, back := roundTrip(t, message.NewMessage(id, nil))
		if back.UUID != id {
			t.Errorf("UUID %q came back as %q", id, back.UUID)
		}
		_, kept := pm.Headers[HeaderUUID]
		if (id == canonical) == kept {
			t.Errorf("UUID %q: header %s present = %v", id, HeaderUUID, kept)
		}
		if id == canonical && pm.ID.String() != id {
			t.Errorf("UUID %q: postbox ID %s", id, pm.ID)
		}
	}
	// The same non-UUID ID is the same postbox message, so postbox
	// deduplicates it; empty IDs are all different messages.
	a, b := toPostbox("t", "", message.NewMessage("ulid-1", nil)), toPostbox("t", "", message.NewMessage("ulid-1", nil))
	if a.ID != b.ID {
		t.Errorf("one Watermill UUID gave two postbox IDs %s and %s", a.ID, b.ID)
	}
	a, b = toPostbox("t", "", message.NewMessage("", nil)), toPostbox("t", "", message.NewMessage("", nil))
	if a.ID == b.ID {
		t.Errorf("two messages without UUID got one postbox ID %s", a.ID)
	}
}

func TestMetadataRoundTrip(t *testing.T) {
	m := message.NewMessage(uuid.NewString(), []byte("payload"))
	m.Metadata = message.Metadata{
		"correlation-id":       "c-1", // a postbox header as it is
		"Content-Type":         "text/plain",
		"_watermill_partition": "p", // starts with '_'
		"handler name":         "x", // a space
		"":                     "empty key",
		"watermill-uuid":       "reserved", // the adapter's own names
		"key=with&query?chars": "v=1&w=2",
		"ok":                   "bad \xff utf-8",
		"nul":                  "a\x00b",
		"ключ":                 "значение",
	}
	want := maps.Clone(m.Metadata)
	pm, back := roundTrip(t, m)
	if !maps.Equal(back.Metadata, want) {
		t.Errorf("metadata came back as %q, want %q", back.Metadata, want)
	}
	if pm.Headers["correlation-id"] != "c-1" || pm.Headers["Content-Type"] != "text/plain" {
		t.Errorf("valid headers were encoded: %q", pm.Headers)
	}
	if string(back.Payload) != "payload" {
		t.Errorf("payload %q", back.Payload)
	}
}

func TestForeignReservedHeadersDeadLetter(t *testing.T) {
	d := &inbox.Delivery{Message: postbox.Message{ID: postbox.NewID(), Headers: map[string]string{HeaderMetadata: "%zz"}}}
	if _, err := toWatermill(d); err == nil {
		t.Fatal("a malformed metadata header decoded")
	}
}

// FuzzMetadataRoundTrip: any UUID and metadata entry survive the trip.
func FuzzMetadataRoundTrip(f *testing.F) {
	f.Add("id", "k", "v")
	f.Add("", "_k", "\x00")
	f.Add(uuid.NewString(), "watermill-metadata", "a&b=c")
	f.Fuzz(func(t *testing.T, id, k, v string) {
		m := message.NewMessage(id, nil)
		m.Metadata.Set(k, v)
		m.Metadata.Set("plain", "value")
		pm := toPostbox("t", "", m)
		if err := (postbox.Limits{}).Validate(pm); err != nil {
			return // too large for postbox: Publish reports it
		}
		back, err := toWatermill(&inbox.Delivery{Message: *pm})
		if err != nil {
			t.Fatal(err)
		}
		if back.UUID != id || !maps.Equal(back.Metadata, m.Metadata) {
			t.Fatalf("(%q, %q) came back as (%q, %q)", id, m.Metadata, back.UUID, back.Metadata)
		}
	})
}
