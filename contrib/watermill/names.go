package watermill

import (
	"fmt"
	"strings"

	"github.com/postbox-dev/postbox"
)

// EncodedPrefix starts every postbox name that encodes a Watermill name
// which is not a valid postbox name as it is. A Watermill name that starts
// with it is encoded too, so every postbox name decodes one way only.
const EncodedPrefix = "wm--"

// TopicName returns the postbox topic for a Watermill topic. A topic that is
// already a valid postbox name (lower case letters, digits, '_', '-' and
// dots between segments; see postbox.NamePattern) and does not start with
// EncodedPrefix is used as it is. Any other topic is encoded:
// EncodedPrefix, then each byte as itself if it is a lower case letter, a
// digit or '-', as '_' and the lower case letter for an upper case one, and
// as "__" and two hex digits otherwise ("Orders/New" becomes
// "wm--_orders__2f_new"). The encoding is reversible (WatermillTopic), so
// two Watermill topics never share a postbox topic.
//
// The empty topic, and a topic whose postbox name would be longer than
// postbox.MaxNameLength, are rejected with a *postbox.ValidationError.
func TopicName(topic string) (string, error) {
	if topic == "" {
		return "", &postbox.ValidationError{Field: "topic", Reason: "empty"}
	}
	name := topic
	if postbox.ValidateName("topic", topic) != nil || strings.HasPrefix(topic, EncodedPrefix) {
		name = EncodedPrefix + escape(topic)
	}
	if len(name) > postbox.MaxNameLength {
		return "", &postbox.ValidationError{Field: "topic", Reason: fmt.Sprintf(
			"Watermill topic %q becomes the postbox topic %q of %d characters, more than %d",
			topic, name, len(name), postbox.MaxNameLength)}
	}
	return name, nil
}

// WatermillTopic is the inverse of TopicName: it returns the Watermill
// topic whose postbox topic is name. A name that TopicName would never
// return (an encoding of a topic that needs none, or a malformed one) is
// an error.
func WatermillTopic(name string) (string, error) {
	if !strings.HasPrefix(name, EncodedPrefix) {
		if err := postbox.ValidateName("topic", name); err != nil {
			return "", err
		}
		return name, nil
	}
	topic, ok := unescape(name[len(EncodedPrefix):])
	if !ok {
		return "", &postbox.ValidationError{Field: "topic", Reason: fmt.Sprintf("%q is not an encoded Watermill topic", name)}
	}
	if again, err := TopicName(topic); err != nil || again != name {
		return "", &postbox.ValidationError{Field: "topic", Reason: fmt.Sprintf("%q is not the canonical encoding of Watermill topic %q", name, topic)}
	}
	return topic, nil
}

// SubscriberName returns the postbox subscriber that holds a consumer
// group's deliveries of one Watermill topic: the group and the topic, each
// encoded as TopicName does but with dots encoded too, joined by a dot
// ("billing" and "orders.created" give "billing.wm--orders__2ecreated").
// Every (group, topic) pair has its own subscriber, so one group's topics
// have separate retry state and dead letters, and dlq and the postbox
// binary find them under this name.
func SubscriberName(group, topic string) (string, error) {
	if group == "" {
		return "", &postbox.ValidationError{Field: "ConsumerGroup", Reason: "empty"}
	}
	if topic == "" {
		return "", &postbox.ValidationError{Field: "topic", Reason: "empty"}
	}
	name := segment(group) + "." + segment(topic)
	if len(name) > postbox.MaxNameLength {
		return "", &postbox.ValidationError{Field: "ConsumerGroup", Reason: fmt.Sprintf(
			"consumer group %q and topic %q make the postbox subscriber name %q of %d characters, more than %d",
			group, topic, name, len(name), postbox.MaxNameLength)}
	}
	return name, nil
}

// segment encodes s as one dot-free segment of a subscriber name.
func segment(s string) string {
	if postbox.ValidateName("subscriber", s) == nil && !strings.Contains(s, ".") && !strings.HasPrefix(s, EncodedPrefix) {
		return s
	}
	return EncodedPrefix + escape(s)
}

const hexDigits = "0123456789abcdef"

// escape keeps lower case letters, digits and '-', writes an upper case
// letter as '_' and its lower case, and any other byte as "__" and two hex
// digits. The result matches [a-z0-9_-]*.
func escape(s string) string {
	var b strings.Builder
	b.Grow(len(s) + len(s)/2)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-':
			b.WriteByte(c)
		case c >= 'A' && c <= 'Z':
			b.WriteByte('_')
			b.WriteByte(c - 'A' + 'a')
		default:
			b.WriteString("__")
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&0xf])
		}
	}
	return b.String()
}

// unescape reverses escape; ok is false for text escape cannot produce.
func unescape(s string) (string, bool) {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-':
			b.WriteByte(c)
		case c != '_' || i+1 >= len(s):
			return "", false
		case s[i+1] >= 'a' && s[i+1] <= 'z':
			b.WriteByte(s[i+1] - 'a' + 'A')
			i++
		case s[i+1] == '_' && i+3 < len(s):
			hi, lo := strings.IndexByte(hexDigits, s[i+2]), strings.IndexByte(hexDigits, s[i+3])
			if hi < 0 || lo < 0 {
				return "", false
			}
			b.WriteByte(byte(hi<<4 | lo))
			i += 3
		default:
			return "", false
		}
	}
	return b.String(), true
}
