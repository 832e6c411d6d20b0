// Package otelpostbox traces and measures postbox with OpenTelemetry,
// after the semantic conventions for messaging (semconv v1.43.0): spans
// named "{messaging.operation.name} {destination}" with messaging.system
// "postbox", messaging.operation.name and .type, messaging.destination.name,
// messaging.message.id, messaging.consumer.group.name and error.type; and
// the metrics messaging.client.sent.messages,
// messaging.client.consumed.messages and messaging.process.duration.
//
// Import it as github.com/postbox-dev/postbox/contrib/otel (its own
// module, so the core needs no OpenTelemetry). Four hooks cover the path
// of a message:
//
//	tel, err := otelpostbox.New(otelpostbox.Config{}) // global providers, W3C Trace Context
//
//	// producer: a "send" PRODUCER span; its context goes into the headers
//	err = tel.Publish(ctx, tx, &postbox.Message{Topic: "order.created", Payload: payload})
//
//	// relay: a "relay" span per committed batch, linked to what it moved
//	r, err := relay.New(pool, relay.Config{OnBatch: tel.OnRelayBatch})
//
//	// consumer: a "process" CONSUMER span per handler call; consumed
//	// messages counted when the batch commits
//	c, err := inbox.NewConsumer(pool, inbox.Config{Subscriber: "billing",
//		Handler: inbox.Chain(handler, tel.Middleware()), OnBatch: tel.OnConsumerBatch})
//
// The creation context travels in the message's traceparent and
// tracestate headers. A process span links to it, as the conventions
// recommend for asynchronous messaging; Config.ParentChild makes it the
// parent instead, so that publish, relay and handle form one trace.
//
// Batches (PublishBatch, SendBatch) get a "send" CLIENT span and one
// "create" PRODUCER span per message, so every message has a creation
// context of its own. Produce traces any other producer, such as
// outbox.PublishSQL.
package otelpostbox
