package watermill_test

import (
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

	"github.com/postbox-dev/postbox/contrib/watermill"
	"github.com/postbox-dev/postbox/dispatcher"
)

// suiteFeatures is what postbox claims in Watermill's universal suite.
//
// Claimed:
//
//   - Persistent: messages live in PostgreSQL, not in a Publisher or
//     Subscriber. A message published before a Subscriber exists, or left
//     unacked by one that closed, reaches the next Subscriber of its
//     consumer group. (The group must have subscribed to the topic before
//     the publish: postbox routes at relay time. The suite calls
//     SubscribeInitialize first, which is what it is for.)
//   - ConsumerGroups: SubscriberConfig.ConsumerGroup. Each group gets its
//     own copy of every message of the topic; the subscribers of one
//     group share the group's copies (SKIP LOCKED), each message handled
//     by one of them.
//
// Not claimed:
//
//   - ExactlyOnceDelivery: delivery to Watermill is at least once. Effects
//     written through the message's transaction happen exactly once, but an
//     acked message is marked handled only when its batch commits, so a
//     crash, a lost connection or a refused commit after the Ack delivers
//     it again. (Claiming it would also skip TestConcurrentClose and
//     TestContinueAfterSubscribeClose.)
//   - GuaranteedOrder, GuaranteedOrderWithSingleSubscriber: postbox orders
//     messages per key only (PublisherConfig.Key); messages without one,
//     as in the suite, are handled concurrently and a retried one falls
//     behind later ones. Per-key order through this adapter is tested in
//     TestKeyOrder.
//   - NewSubscriberReceivesOldMessages: a handled delivery is deleted; a
//     new group receives only what is published after it subscribed.
//   - ContextPreserved: a context cannot cross the database. (The suite
//     then checks that a message's context ends at its Ack and when its
//     subscriber closes, which holds.)
//   - RequireSingleInstance: not required; any number of Publishers and
//     Subscribers, in any processes, share the database.
//   - RestartServiceCommand: empty here, so the suite skips TestReconnect
//     in this run: restarting the shared PostgreSQL server would break
//     every other package testing against it at the same time in CI.
//     TestReconnect (reconnect_test.go) runs the suite's TestReconnect,
//     ported (the suite's version has a data race of its own under -race),
//     on a private server that it restarts twice.
//   - ForceShort: not set; the suite runs in full mode unless -short is
//     given.
var suiteFeatures = tests.Features{
	ConsumerGroups: true,
	Persistent:     true,
}

// suiteOptions are the consumer groups' retry settings in the suite.
// TestContinueAfterErrors nacks each of its 50 messages about 6 times
// (3 subscribers × 100 nacks), and a subscriber that closes counts an
// attempt for the messages it held, then expects every message back within
// 15 seconds: postbox's default backoff (1s doubling) would hold the later
// retries back for longer, and its default 10 attempts would dead-letter
// some. Dead-lettering after MaxAttempts, which the suite does not know
// of, is tested in TestNackDeadLetters.
var suiteOptions = dispatcher.Options{
	MaxAttempts: 1000,
	Backoff:     dispatcher.Backoff{Initial: time.Millisecond, Max: 20 * time.Millisecond, Multiplier: 2},
}

// TestPubSub runs Watermill's universal Pub/Sub suite, in full mode unless
// -short is given, against one database and one relay.
//
// Subscribers poll (NoListen) here: TestConcurrentSubscribe opens 50 at
// once, and each LISTEN connection would count against the server's
// max_connections beside every other package's tests.
func TestPubSub(t *testing.T) {
	b := setup(t, 8, 16)
	start := time.Now()
	t.Cleanup(func() { t.Logf("TestPubSub took %s (short mode: %v)", time.Since(start), testing.Short()) })
	group := func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
		pub, err := watermill.NewPublisher(b.pub, watermill.PublisherConfig{})
		if err != nil {
			t.Fatal(err)
		}
		sub, err := watermill.NewSubscriber(b.sub, watermill.SubscriberConfig{
			ConsumerGroup: group,
			Options:       suiteOptions,
			NoListen:      true,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Close() })
		return pub, sub
	}
	tests.TestPubSub(t, suiteFeatures,
		func(t *testing.T) (message.Publisher, message.Subscriber) { return group(t, "suite") },
		group)
}
