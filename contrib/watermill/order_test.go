package watermill_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	wm "github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

	"github.com/postbox-dev/postbox/contrib/watermill"
	"github.com/postbox-dev/postbox/dispatcher"
)

// TestKeyOrder: postbox orders messages per key (PublisherConfig.Key),
// across any number of subscribers of a group. The suite's own order tests
// pass when the key names what they expect to be ordered:
//
//   - TestPublishSubscribeInOrder checks order per payload ("0" to "15")
//     across 10 subscribers: keyed by payload.
//   - TestNoAck checks that a topic's second message waits for the first
//     one's Ack: keyed by topic, so the topic is one ordered stream.
//
// And a nacked message is retried before the later messages of its key.
func TestKeyOrder(t *testing.T) {
	t.Parallel()
	b := setup(t, 8, 16)
	constructor := func(key func(topic string, m *message.Message) string) tests.PubSubConstructor {
		return func(t *testing.T) (message.Publisher, message.Subscriber) {
			pub := newPublisher(t, b.pub, watermill.PublisherConfig{Key: key})
			sub := newSubscriber(t, b.sub, watermill.SubscriberConfig{ConsumerGroup: "ordered", NoListen: true})
			return pub, sub
		}
	}
	ordered := tests.TestContext{Features: tests.Features{GuaranteedOrder: true, Persistent: true, ConsumerGroups: true}}
	t.Run("TestPublishSubscribeInOrder", func(t *testing.T) {
		tc := ordered
		tc.TestID = tests.NewTestID()
		tests.TestPublishSubscribeInOrder(t, tc, constructor(func(_ string, m *message.Message) string { return string(m.Payload) }))
	})
	t.Run("TestNoAck", func(t *testing.T) {
		tc := ordered
		tc.TestID = tests.NewTestID()
		tests.TestNoAck(t, tc, constructor(func(topic string, _ *message.Message) string { return topic }))
	})
	t.Run("NackedMessageKeepsItsKeyInOrder", func(t *testing.T) {
		const topic, keys, perKey = "ledger.entries", 4, 25
		pub := newPublisher(t, b.pub, watermill.PublisherConfig{Key: func(_ string, m *message.Message) string { return m.Metadata["account"] }})
		sub := newSubscriber(t, b.sub, watermill.SubscriberConfig{
			ConsumerGroup: "ledger", Concurrency: 4,
			Options: dispatcher.Options{Backoff: fastRetries},
		})
		ch := subscribe(t, sub, topic)
		var msgs []*message.Message
		for i := range perKey {
			for k := range keys {
				m := message.NewMessage(wm.NewUUID(), fmt.Appendf(nil, "%d", i))
				m.Metadata.Set("account", fmt.Sprintf("acct-%d", k))
				msgs = append(msgs, m)
			}
		}
		if err := pub.Publish(topic, msgs...); err != nil {
			t.Fatal(err)
		}
		// Four messages in flight at once, acked by goroutines in any
		// order; the 10th message of acct-0 is nacked twice.
		var mu sync.Mutex
		acked := map[string][]string{}
		nacks := 0
		var wg sync.WaitGroup
		for range len(msgs) + 2 {
			m := receive(t, ch, 15*time.Second)
			wg.Go(func() {
				acct := m.Metadata["account"]
				mu.Lock()
				defer mu.Unlock()
				if acct == "acct-0" && string(m.Payload) == "9" && nacks < 2 {
					nacks++
					m.Nack()
					return
				}
				acked[acct] = append(acked[acct], string(m.Payload))
				m.Ack()
			})
		}
		wg.Wait()
		for k := range keys {
			acct := fmt.Sprintf("acct-%d", k)
			got := acked[acct]
			if len(got) != perKey {
				t.Errorf("%s: %d messages acked, want %d", acct, len(got), perKey)
			}
			for i, p := range got {
				if p != fmt.Sprint(i) {
					t.Errorf("%s: acked in the order %v", acct, got)
					break
				}
			}
		}
	})
}
