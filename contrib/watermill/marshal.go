package watermill

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/inbox"
)

// Headers that carry what a postbox header cannot hold as it is. Every
// header name that starts with ReservedHeaderPrefix is the adapter's: a
// metadata key that starts with it travels in HeaderMetadata.
const (
	ReservedHeaderPrefix = "watermill-"
	// HeaderUUID holds the Watermill UUID, query-escaped, when it is not a
	// canonical UUID string (lower case, hyphenated, not all zeros) that
	// could be the postbox message ID itself.
	HeaderUUID = ReservedHeaderPrefix + "uuid"
	// HeaderMetadata holds, as a URL query string (url.Values.Encode), the
	// metadata entries that cannot be headers as they are: a key that is
	// not a valid postbox header name or starts with ReservedHeaderPrefix,
	// or a value that is not valid UTF-8 or holds a NUL byte.
	HeaderMetadata = ReservedHeaderPrefix + "metadata"
)

// idNamespace names the UUIDv5 (SHA-1) IDs derived from Watermill UUIDs
// that are not UUIDs: the same Watermill UUID always gets the same postbox
// ID, so postbox deduplicates it as it would a UUID.
var idNamespace = uuid.MustParse("6f2b1c8e-3d5a-4e0b-9c47-8a1d2e3f4b5c")

// messageID returns the postbox ID for a Watermill UUID, and whether the
// Watermill UUID must travel in HeaderUUID to come back unchanged.
func messageID(wmUUID string) (id uuid.UUID, keep bool) {
	if u, err := uuid.Parse(wmUUID); err == nil && u != uuid.Nil && u.String() == wmUUID {
		return u, false
	}
	if wmUUID == "" {
		// Every message without a UUID is a message of its own: one
		// derived ID for all of them would drop all but the first as
		// duplicates.
		return postbox.NewID(), true
	}
	return uuid.NewSHA1(idNamespace, []byte(wmUUID)), true
}

// toPostbox maps a Watermill message onto a postbox message for topic:
// the UUID onto the ID (or HeaderUUID), metadata onto headers (or
// HeaderMetadata), the payload as it is.
func toPostbox(topic, key string, m *message.Message) *postbox.Message {
	id, keepUUID := messageID(m.UUID)
	var h map[string]string
	if len(m.Metadata) > 0 || keepUUID {
		h = make(map[string]string, len(m.Metadata)+1)
	}
	var encoded url.Values
	for k, v := range m.Metadata {
		if plainHeader(k, v) {
			h[k] = v
			continue
		}
		if encoded == nil {
			encoded = url.Values{}
		}
		encoded.Set(k, v)
	}
	if encoded != nil {
		h[HeaderMetadata] = encoded.Encode()
	}
	if keepUUID {
		h[HeaderUUID] = url.QueryEscape(m.UUID)
	}
	return &postbox.Message{ID: id, Topic: topic, Key: key, Payload: m.Payload, Headers: h}
}

// plainHeader reports whether the metadata entry (k, v) can be a postbox
// header as it is, by postbox's own rules.
func plainHeader(k, v string) bool {
	if strings.HasPrefix(k, ReservedHeaderPrefix) {
		return false
	}
	return postbox.Limits{}.Validate(&postbox.Message{Headers: map[string]string{k: v}}) == nil
}

// toWatermill maps a delivery back onto a Watermill message: the inverse
// of toPostbox. Headers set by postbox itself (correlation-id, causation-id,
// x-replay-count and so on) become metadata like any other. An error means
// the reserved headers were not written by this package; such a delivery
// can never be read, so the subscriber dead-letters it at once.
func toWatermill(d *inbox.Delivery) (*message.Message, error) {
	wmUUID := d.ID.String()
	md := make(message.Metadata, len(d.Headers))
	for k, v := range d.Headers {
		switch k {
		case HeaderUUID:
			u, err := url.QueryUnescape(v)
			if err != nil {
				return nil, fmt.Errorf("watermill: header %s of message %s: %w", HeaderUUID, d.ID, err)
			}
			wmUUID = u
		case HeaderMetadata:
			vals, err := url.ParseQuery(v)
			if err != nil {
				return nil, fmt.Errorf("watermill: header %s of message %s: %w", HeaderMetadata, d.ID, err)
			}
			for ek, ev := range vals {
				if len(ev) != 1 {
					return nil, fmt.Errorf("watermill: header %s of message %s: key %q appears %d times", HeaderMetadata, d.ID, ek, len(ev))
				}
				md[ek] = ev[0]
			}
		default:
			md[k] = v
		}
	}
	m := message.NewMessage(wmUUID, d.Payload)
	m.Metadata = md
	return m, nil
}
