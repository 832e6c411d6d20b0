// Package headers encodes message headers for the jsonb columns of the
// outbox and the inbox, and decodes them back, the same way everywhere.
package headers

import "encoding/json"

// Encode returns the JSON object for h, or nil (SQL NULL) when h is empty.
func Encode(h map[string]string) ([]byte, error) {
	if len(h) == 0 {
		return nil, nil
	}
	return json.Marshal(h)
}

// Decode reads a headers object. postbox writes string values only; a value
// written some other way (by hand, in SQL) is kept as its JSON text rather
// than failing the message. Only a column that is not a JSON object at all
// is an error.
func Decode(b []byte) (map[string]string, error) {
	if len(b) == 0 || string(b) == "null" {
		return nil, nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, err
	}
	h := make(map[string]string, len(raw))
	for k, v := range raw {
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			s = string(v)
		}
		h[k] = s
	}
	return h, nil
}
