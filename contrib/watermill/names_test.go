package watermill_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/contrib/watermill"
)

func TestTopicName(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"orders.created", "orders.created"},
		{"topic-3f2a1b4c-0d5e-4f60-8a7b-9c0d1e2f3a4b", "topic-3f2a1b4c-0d5e-4f60-8a7b-9c0d1e2f3a4b"},
		{"order_created", "order_created"},
		{"Orders/New", "wm--_orders__2f_new"},
		{"a..b", "wm--a__2e__2eb"},
		{"orders.*", "wm--orders__2e__2a"},
		{"wm--x", "wm--wm--x"}, // the prefix itself is encoded, so decoding is unambiguous
		{"_private", "wm--__5fprivate"},
		{"zürich", "wm--z__c3__bcrich"},
	} {
		got, err := watermill.TopicName(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("TopicName(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			continue
		}
		if err := postbox.ValidateName("topic", got); err != nil {
			t.Errorf("TopicName(%q) = %q, not a valid postbox name: %v", tc.in, got, err)
		}
		back, err := watermill.WatermillTopic(got)
		if err != nil || back != tc.in {
			t.Errorf("WatermillTopic(%q) = %q, %v; want %q", got, back, err, tc.in)
		}
	}
}

func TestTopicNameRejects(t *testing.T) {
	for _, in := range []string{"", strings.Repeat("A", 100), strings.Repeat("a", postbox.MaxNameLength+1)} {
		_, err := watermill.TopicName(in)
		if !errors.Is(err, postbox.ErrInvalid) {
			t.Errorf("TopicName(%.20q…) error = %v, want a validation error", in, err)
		}
	}
	// Names TopicName never returns do not decode: the mapping is one to one.
	for _, name := range []string{"wm--abc", "wm--_", "wm--__zz", "wm--__4", "Upper", "wm--A"} {
		if got, err := watermill.WatermillTopic(name); err == nil {
			t.Errorf("WatermillTopic(%q) = %q, want an error", name, got)
		}
	}
}

func TestSubscriberName(t *testing.T) {
	for _, tc := range []struct{ group, topic, want string }{
		{"billing", "invoices", "billing.invoices"},
		{"billing", "orders.created", "billing.wm--orders__2ecreated"},
		{"a.b", "c", "wm--a__2eb.c"},
		{"a", "b.c", "a.wm--b__2ec"},
		{"Billing", "Orders/New", "wm--_billing.wm--_orders__2f_new"},
	} {
		got, err := watermill.SubscriberName(tc.group, tc.topic)
		if err != nil || got != tc.want {
			t.Errorf("SubscriberName(%q, %q) = %q, %v; want %q", tc.group, tc.topic, got, err, tc.want)
		}
	}
	if _, err := watermill.SubscriberName("", "t"); !errors.Is(err, postbox.ErrInvalid) {
		t.Errorf("SubscriberName without a group: %v, want a validation error", err)
	}
	if _, err := watermill.SubscriberName(strings.Repeat("g", 150), strings.Repeat("t", 60)); !errors.Is(err, postbox.ErrInvalid) {
		t.Errorf("SubscriberName too long: %v, want a validation error", err)
	}
}

// FuzzTopicName: every topic TopicName accepts becomes a valid postbox
// name that decodes back to it.
func FuzzTopicName(f *testing.F) {
	for _, s := range []string{"orders", "Orders/New", "wm--x", "a..b", "\x00\xff", "topic-1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, topic string) {
		name, err := watermill.TopicName(topic)
		if err != nil {
			if !errors.Is(err, postbox.ErrInvalid) {
				t.Fatalf("TopicName(%q): %v, want a validation error", topic, err)
			}
			return
		}
		if err := postbox.ValidateName("topic", name); err != nil {
			t.Fatalf("TopicName(%q) = %q: %v", topic, name, err)
		}
		back, err := watermill.WatermillTopic(name)
		if err != nil || back != topic {
			t.Fatalf("WatermillTopic(TopicName(%q) = %q) = %q, %v", topic, name, back, err)
		}
	})
}

// FuzzSubscriberName: distinct (group, topic) pairs never share a
// subscriber name.
func FuzzSubscriberName(f *testing.F) {
	f.Add("a.b", "c", "a", "b.c")
	f.Add("g", "t", "g", "t")
	f.Fuzz(func(t *testing.T, g1, t1, g2, t2 string) {
		n1, err1 := watermill.SubscriberName(g1, t1)
		n2, err2 := watermill.SubscriberName(g2, t2)
		if err1 != nil || err2 != nil {
			return
		}
		if err := postbox.ValidateName("subscriber", n1); err != nil {
			t.Fatalf("SubscriberName(%q, %q) = %q: %v", g1, t1, n1, err)
		}
		if (n1 == n2) != (g1 == g2 && t1 == t2) {
			t.Fatalf("SubscriberName(%q, %q) = %q and SubscriberName(%q, %q) = %q", g1, t1, n1, g2, t2, n2)
		}
	})
}
