package otelpostbox

import (
	"context"
	"maps"
	"slices"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/postbox-dev/postbox"
)

// Publish is outbox.Publish in a "send" span whose context travels in the
// message's headers (traceparent, tracestate) as its creation context. It
// has the signature inbox.Transform expects of deliver.
func (t *Telemetry) Publish(ctx context.Context, db postbox.DBTX, msg *postbox.Message) error {
	return t.Produce(ctx, []*postbox.Message{msg}, false, func(ctx context.Context) error {
		return t.outbox.Publish(ctx, db, msg)
	})
}

// Send is outbox.Send, traced as Publish is.
func (t *Telemetry) Send(ctx context.Context, db postbox.DBTX, msg *postbox.Message) error {
	return t.Produce(ctx, []*postbox.Message{msg}, true, func(ctx context.Context) error {
		return t.outbox.Send(ctx, db, msg)
	})
}

// PublishBatch is outbox.PublishBatch in a "send" span, with a "create"
// span per message as its creation context (see Produce).
func (t *Telemetry) PublishBatch(ctx context.Context, db postbox.DBTX, msgs []*postbox.Message) error {
	return t.Produce(ctx, msgs, false, func(ctx context.Context) error {
		return t.outbox.PublishBatch(ctx, db, msgs)
	})
}

// SendBatch is outbox.SendBatch, traced as PublishBatch is.
func (t *Telemetry) SendBatch(ctx context.Context, db postbox.DBTX, msgs []*postbox.Message) error {
	return t.Produce(ctx, msgs, true, func(ctx context.Context) error {
		return t.outbox.SendBatch(ctx, db, msgs)
	})
}

// Produce traces write, which writes msgs to the outbox (to queues if
// queue is set), for any producer: outbox.PublishSQL, an Outbox of one's
// own, a helper that publishes and logs.
//
//	err := tel.Produce(ctx, []*postbox.Message{msg}, false, func(ctx context.Context) error {
//		return outbox.PublishSQL(ctx, sqlTx, msg)
//	})
//
// One message gets a "send {topic}" PRODUCER span, whose context is
// injected into the message's headers. A batch gets a "send" CLIENT span
// linked to one "create {topic}" PRODUCER span per message, each injected
// into its message, so that every message has a creation context of its
// own. A message that already carries a creation context keeps it, and the
// send span links to it. Empty IDs are filled first, so spans name them.
//
// messaging.client.sent.messages counts the messages of each call, with
// error.type when it failed. It counts writes, not commits: a transaction
// rolled back later still counted them.
func (t *Telemetry) Produce(ctx context.Context, msgs []*postbox.Message, queue bool, write func(ctx context.Context) error) error {
	var live []*postbox.Message // not nil: write reports a nil one
	for _, m := range msgs {
		if m != nil {
			live = append(live, m)
		}
	}
	if len(live) == 0 {
		return write(ctx)
	}
	for _, m := range live {
		if m.ID == [16]byte{} {
			m.ID = postbox.NewID()
		}
	}
	if len(live) == 1 {
		return t.sendOne(ctx, live[0], queue, write)
	}
	return t.sendBatch(ctx, live, queue, write)
}

// creation is the creation context msg already carries, if any.
func (t *Telemetry) creation(msg *postbox.Message) trace.SpanContext {
	if len(msg.Headers) == 0 {
		return trace.SpanContext{}
	}
	return trace.SpanContextFromContext(t.prop.Extract(context.Background(), propagation.MapCarrier(msg.Headers)))
}

// inject writes ctx's span context into a copy of msg's headers: the
// caller's map may be shared by other messages.
func (t *Telemetry) inject(ctx context.Context, msg *postbox.Message) {
	h := make(map[string]string, len(msg.Headers)+2)
	maps.Copy(h, msg.Headers)
	t.prop.Inject(ctx, propagation.MapCarrier(h))
	msg.Headers = h
}

func (t *Telemetry) sendOne(ctx context.Context, msg *postbox.Message, queue bool, write func(context.Context) error) error {
	attrs := append(common(OpSend, semconv.MessagingOperationTypeSend), messageAttrs(msg)...)
	attrs = append(attrs, AttrQueue.Bool(queue))
	opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer)}
	custom := t.creation(msg)
	if custom.IsValid() {
		// The message's own creation context stays; this span is then
		// only the call, and links to it.
		opts = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindClient), trace.WithLinks(trace.Link{SpanContext: custom})}
	}
	ctx, span := t.tracer.Start(ctx, OpSend+" "+msg.Topic, append(opts, trace.WithAttributes(attrs...))...)
	defer span.End()
	if !custom.IsValid() {
		t.inject(ctx, msg)
	}
	err := write(ctx)
	// Publish filled the correlation from the handler's delivery, if any.
	if c := msg.Headers[postbox.HeaderCorrelationID]; c != "" {
		span.SetAttributes(semconv.MessagingMessageConversationID(c))
	}
	metric := []attribute.KeyValue{semconv.MessagingDestinationName(msg.Topic)}
	if err != nil {
		metric = append(metric, fail(span, err))
	}
	t.sent.Add(ctx, 1, OpSend, System, metric...)
	return err
}

func (t *Telemetry) sendBatch(ctx context.Context, msgs []*postbox.Message, queue bool, write func(context.Context) error) error {
	links := make([]trace.Link, 0, len(msgs))
	perTopic := make(map[string]int64)
	for _, m := range msgs {
		perTopic[m.Topic]++
		if c := t.creation(m); c.IsValid() {
			links = append(links, trace.Link{SpanContext: c})
			continue
		}
		attrs := append(common(OpCreate, semconv.MessagingOperationTypeCreate), messageAttrs(m)...)
		cctx, span := t.tracer.Start(ctx, OpCreate+" "+m.Topic, trace.WithSpanKind(trace.SpanKindProducer),
			trace.WithAttributes(append(attrs, AttrQueue.Bool(queue))...))
		t.inject(cctx, m)
		span.End()
		links = append(links, trace.Link{SpanContext: span.SpanContext()})
	}
	attrs := append(common(OpSend, semconv.MessagingOperationTypeSend),
		semconv.MessagingBatchMessageCount(len(msgs)), AttrQueue.Bool(queue))
	name := OpSend
	if len(perTopic) == 1 {
		name += " " + msgs[0].Topic
		attrs = append(attrs, semconv.MessagingDestinationName(msgs[0].Topic))
	}
	ctx, span := t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithLinks(links...), trace.WithAttributes(attrs...))
	defer span.End()
	err := write(ctx)
	var et []attribute.KeyValue
	if err != nil {
		et = append(et, fail(span, err))
	}
	for topic, n := range perTopic {
		t.sent.Add(ctx, n, OpSend, System, slices.Concat(et, []attribute.KeyValue{semconv.MessagingDestinationName(topic)})...)
	}
	return err
}
