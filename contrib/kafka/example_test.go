package kafka_test

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/contrib/kafka"
	"github.com/postbox-dev/postbox/dispatcher"
	"github.com/postbox-dev/postbox/internal/murmur2"
)

// A Sink produces a batch to the partition Kafka's default partitioner
// picks for each key — the partition postbox computed at publish time —
// and returns once every record is acknowledged. (A relay calls Deliver;
// this example calls it directly, against an in-process fake cluster.)
func ExampleSink() {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(6, "order.created"))
	if err != nil {
		panic(err)
	}
	defer cluster.Close()
	ctx := context.Background()
	sink, err := kafka.NewSink(kafka.SinkConfig{}, kgo.SeedBrokers(cluster.ListenAddrs()...))
	if err != nil {
		panic(err)
	}
	defer sink.Close()

	var batch []dispatcher.Envelope
	for _, key := range []string{"order-1", "order-2", "order-1"} {
		// The relay fills KeyHash from the outbox row, where
		// outbox.Publish stored the key's murmur2 hash.
		batch = append(batch, dispatcher.Envelope{
			Message: postbox.Message{ID: postbox.NewID(), Topic: "order.created", Key: key, Payload: []byte(`{}`)},
			KeyHash: murmur2.Positive([]byte(key)),
		})
	}
	if err := sink.Deliver(ctx, batch); err != nil {
		panic(err)
	}
	fmt.Printf("%+v\n", sink.Stats())

	cl, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...), kgo.ConsumeTopics("order.created"))
	if err != nil {
		panic(err)
	}
	defer cl.Close()
	for n := 0; n < len(batch); {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			n++
			fmt.Printf("%s partition %d (Kafka's pick: %d)\n", r.Key, r.Partition, dispatcher.Partition(string(r.Key), 6))
		})
	}
	// Unordered output:
	// {Batches:1 Records:3 Failed:0}
	// order-1 partition 4 (Kafka's pick: 4)
	// order-2 partition 3 (Kafka's pick: 3)
	// order-1 partition 4 (Kafka's pick: 4)
}
