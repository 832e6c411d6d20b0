package watermill_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	wm "github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/postbox-dev/postbox/contrib/watermill"
)

// BenchmarkSubscriber measures a Subscriber draining a preloaded topic:
// the reader acks each message as it comes (as a Watermill router whose
// handler does nothing would), one relay moves the messages meanwhile.
// msgs/s is end to end, from the first Subscribe to the last Ack.
//
//	go test -run '^$' -bench Subscriber -benchtime 20000x ./contrib/watermill
func BenchmarkSubscriber(b *testing.B) {
	for _, c := range []struct{ batch, concurrency int }{{1, 1}, {1, 4}, {50, 1}, {50, 4}} {
		b.Run(fmt.Sprintf("batch=%d/concurrency=%d", c.batch, c.concurrency), func(b *testing.B) {
			bb := setup(b, 4, c.concurrency+4)
			sub, err := watermill.NewSubscriber(bb.sub, watermill.SubscriberConfig{
				ConsumerGroup: "bench", BatchSize: c.batch, Concurrency: c.concurrency})
			if err != nil {
				b.Fatal(err)
			}
			defer sub.Close()
			const topic = "bench"
			if err := sub.SubscribeInitialize(topic); err != nil {
				b.Fatal(err)
			}
			pub, _ := watermill.NewPublisher(bb.pub, watermill.PublisherConfig{})
			for left := b.N; left > 0; left -= 1000 {
				msgs := make([]*message.Message, min(left, 1000))
				for i := range msgs {
					msgs[i] = message.NewMessage(wm.NewUUID(), []byte(`{"n":1}`))
				}
				if err := pub.Publish(topic, msgs...); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			start := time.Now()
			ch, err := sub.Subscribe(context.Background(), topic)
			if err != nil {
				b.Fatal(err)
			}
			for range b.N {
				select {
				case m := <-ch:
					m.Ack()
				case <-time.After(30 * time.Second):
					b.Fatal("no message for 30s")
				}
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
		})
	}
}
