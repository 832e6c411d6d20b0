package postbox

import (
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"
)

// NamePattern is what topic, queue and subscriber names must match: lower
// case letters, digits, '_' and '-', in segments separated by single dots,
// starting with a letter or digit; at most MaxNameLength characters. Topic
// patterns match segment by segment, so an empty segment ("a..b", "order.")
// would name a topic no pattern could match.
const NamePattern = `^[a-z0-9][a-z0-9_-]*(\.[a-z0-9_-]+)*$`

// MaxNameLength bounds topic, queue and subscriber names.
const MaxNameLength = 200

var nameRE = regexp.MustCompile(NamePattern)

// headerNameRE: header names are ASCII tokens, as in HTTP.
var headerNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Limits bound what one message may carry. The zero value of each field
// means its default.
type Limits struct {
	// MaxPayloadBytes: default 1 MiB.
	MaxPayloadBytes int
	// MaxHeaders: default 64.
	MaxHeaders int
	// MaxHeaderBytes: the total size of header names and values, default 16 KiB.
	MaxHeaderBytes int
	// MaxKeyBytes: default 1024, at most MaxKeyBytesLimit.
	MaxKeyBytes int
}

// Default limits.
const (
	DefaultMaxPayloadBytes = 1 << 20
	DefaultMaxHeaders      = 64
	DefaultMaxHeaderBytes  = 16 << 10
	DefaultMaxKeyBytes     = 1024
	// MaxKeyBytesLimit is the ceiling on MaxKeyBytes: keys are indexed with
	// the subscriber name, and a btree entry holds at most 2704 bytes.
	MaxKeyBytesLimit = 2048
	maxTypeBytes     = 200
)

func (l Limits) withDefaults() Limits {
	if l.MaxPayloadBytes <= 0 {
		l.MaxPayloadBytes = DefaultMaxPayloadBytes
	}
	if l.MaxHeaders <= 0 {
		l.MaxHeaders = DefaultMaxHeaders
	}
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if l.MaxKeyBytes <= 0 {
		l.MaxKeyBytes = DefaultMaxKeyBytes
	}
	l.MaxKeyBytes = min(l.MaxKeyBytes, MaxKeyBytesLimit)
	return l
}

// ValidateName checks a topic, queue or subscriber name against NamePattern.
// field is the input's Go path, named in the error (Message.Topic,
// Config.Subscriber, subscriber).
func ValidateName(field, name string) error {
	if name == "" {
		return invalid(field, "empty")
	}
	if len(name) > MaxNameLength {
		return invalid(field, "%d characters, more than %d", len(name), MaxNameLength)
	}
	if !validName(name) {
		return invalid(field, "%q does not match %s", name, NamePattern)
	}
	return nil
}

// Validate checks m against the limits, field by field, and returns the
// first problem as a *ValidationError (errors.Is(err, ErrInvalid)).
// It does not check Topic: callers check it as a topic or a queue name.
func (l Limits) Validate(m *Message) error {
	l = l.withDefaults()
	if len(m.Type) > maxTypeBytes {
		return invalid("Message.Type", "%d bytes, more than %d", len(m.Type), maxTypeBytes)
	}
	if err := checkText("Message.Type", m.Type); err != nil {
		return err
	}
	if len(m.Key) > l.MaxKeyBytes {
		return invalid("Message.Key", "%d bytes, more than %d", len(m.Key), l.MaxKeyBytes)
	}
	if err := checkText("Message.Key", m.Key); err != nil {
		return err
	}
	if len(m.Payload) > l.MaxPayloadBytes {
		return invalid("Message.Payload", "%d bytes, more than the limit of %d", len(m.Payload), l.MaxPayloadBytes)
	}
	if len(m.Headers) > l.MaxHeaders {
		return invalid("Message.Headers", "%d headers, more than %d", len(m.Headers), l.MaxHeaders)
	}
	total := 0
	for k, v := range m.Headers {
		if !validHeaderName(k) {
			return invalid("Message.Headers", "name %q does not match %s", k, headerNameRE)
		}
		if why := textProblem(v); why != "" {
			// The field is built only here: this loop runs for every
			// header of every message published.
			return invalid(fmt.Sprintf("Message.Headers[%q]", k), "%s", why)
		}
		total += len(k) + len(v)
	}
	if total > l.MaxHeaderBytes {
		return invalid("Message.Headers", "%d bytes in all, more than %d", total, l.MaxHeaderBytes)
	}
	return nil
}

// validName is nameRE.MatchString written as a loop: it runs for every
// message published, and the regular expression was a quarter of
// PublishBatch's validation time (CPU profile). A test holds the two equal.
func validName(s string) bool {
	if s == "" {
		return false
	}
	segStart := true // at the start of a segment: a letter, digit, '_' or '-' must follow
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z' || c >= '0' && c <= '9':
			segStart = false
		case c == '_' || c == '-':
			if i == 0 {
				return false // the name starts with a letter or digit
			}
			segStart = false
		case c == '.':
			if segStart {
				return false // empty segment
			}
			segStart = true
		default:
			return false
		}
	}
	return !segStart
}

// validHeaderName is headerNameRE.MatchString written as a loop, for the
// same reason as validName.
func validHeaderName(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '_' && c != '-') {
			return false
		}
	}
	return true
}

// checkText rejects what PostgreSQL text and jsonb cannot hold.
func checkText(field, s string) error {
	if why := textProblem(s); why != "" {
		return invalid(field, "%s", why)
	}
	return nil
}

// textProblem says why PostgreSQL text and jsonb cannot hold s, or "".
func textProblem(s string) string {
	if !utf8.ValidString(s) {
		return "not valid UTF-8"
	}
	if strings.IndexByte(s, 0) >= 0 {
		return "contains a NUL byte"
	}
	return ""
}
