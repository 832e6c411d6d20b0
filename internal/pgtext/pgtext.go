// Package pgtext makes Go strings safe to store in PostgreSQL text columns.
package pgtext

import (
	"strings"
	"unicode/utf8"
)

// MaxErrorBytes bounds the error text postbox stores with a failed
// delivery or a dead letter.
const MaxErrorBytes = 4096

// Clean returns s as PostgreSQL text can hold it: valid UTF-8 without NUL
// bytes (each bad byte becomes U+FFFD), cut at a character boundary to at
// most limit bytes. Text it cannot hold would fail the statement that
// records it, on every attempt.
func Clean(s string, limit int) string {
	s = strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
	if len(s) > limit {
		cut := limit
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}
