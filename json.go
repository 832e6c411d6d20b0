package postbox

import (
	"encoding/json"
	"fmt"
)

// JSON encodes v as a message payload.
func JSON(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("postbox: encode payload: %w", err)
	}
	return b, nil
}

// Decode decodes a JSON payload into a T. A payload that does not decode is
// a permanent error: retrying cannot fix it, so the message is dead-lettered
// at once.
func Decode[T any](payload []byte) (T, error) {
	var v T
	if err := json.Unmarshal(payload, &v); err != nil {
		return v, Permanent(fmt.Errorf("postbox: decode payload as %T: %w", v, err))
	}
	return v, nil
}
