package jetstream_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/postbox-dev/postbox"
	pbjetstream "github.com/postbox-dev/postbox/contrib/jetstream"
	"github.com/postbox-dev/postbox/dispatcher"
)

// A Sink publishes a batch and returns once the stream has acknowledged
// it. Handed the same batch again — as a relay does after a crash between
// publishing and deleting — the stream stores nothing new: the message
// IDs are in its duplicate window. (A relay calls Deliver; this example
// calls it directly, with an embedded server.)
func ExampleSink() {
	dir, err := os.MkdirTemp("", "example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		panic(err)
	}
	go srv.Start()
	defer srv.Shutdown()
	if !srv.ReadyForConnections(10 * time.Second) {
		panic("nats-server not ready")
	}

	ctx := context.Background()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		panic(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		panic(err)
	}
	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "POSTBOX", Subjects: []string{"postbox.>"}, Duplicates: 10 * time.Minute})
	if err != nil {
		panic(err)
	}
	sink, err := pbjetstream.NewSink(js, pbjetstream.SinkConfig{Stream: "POSTBOX"})
	if err != nil {
		panic(err)
	}

	batch := []dispatcher.Envelope{
		{Message: postbox.Message{ID: postbox.NewID(), Topic: "order.created", Key: "order-1", Payload: []byte(`{"total":100}`)}},
		{Message: postbox.Message{ID: postbox.NewID(), Topic: "order.paid", Key: "order-1", Payload: []byte(`{}`)}},
		{Message: postbox.Message{ID: postbox.NewID(), Topic: "shipment", Payload: []byte(`{}`)}, Queue: true},
	}
	for range 2 {
		if err := sink.Deliver(ctx, batch); err != nil {
			panic(err)
		}
		info, err := stream.Info(ctx)
		if err != nil {
			panic(err)
		}
		s := sink.Stats()
		fmt.Printf("stream holds %d; published %d, duplicates %d\n", info.State.Msgs, s.Published, s.Duplicates)
	}
	msg, err := stream.GetLastMsgForSubject(ctx, "postbox.queue.shipment")
	if err != nil {
		panic(err)
	}
	fmt.Println(msg.Header.Get(pbjetstream.HeaderTopic), msg.Header.Get(jetstream.MsgIDHeader) == batch[2].ID.String())
	// Output:
	// stream holds 3; published 3, duplicates 0
	// stream holds 3; published 3, duplicates 3
	// shipment true
}
