package otelpostbox

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/postbox-dev/postbox/inbox"
)

// Middleware traces each handler call in a "process {topic}" CONSUMER
// span linked to the delivery's creation context (its child instead, with
// Config.ParentChild), and records messaging.process.duration. The span's
// context is the handler's, so what the handler publishes through
// Telemetry's producers is its child. An error, or a panic (which goes on
// to the consumer), sets the span's error status and error.type.
//
// A consumer may run a handler more than once for one delivery (after
// another delivery of its batch failed, the batch runs again with one
// savepoint per delivery): each run is a span of its own, and only the
// last run's effects commit. A delivery handed back with inbox.ErrRelease
// is no failure: its span carries messaging.postbox.delivery.released. Put Middleware outermost, so that the span
// covers the other middleware.
func (t *Telemetry) Middleware() inbox.Middleware {
	return func(next inbox.Handler) inbox.Handler {
		return inbox.HandlerFunc(func(ctx context.Context, tx pgx.Tx, d *inbox.Delivery) (err error) {
			attrs := append(common(OpProcess, semconv.MessagingOperationTypeProcess), messageAttrs(&d.Message)...)
			attrs = append(attrs,
				semconv.MessagingConsumerGroupName(d.Subscriber),
				semconv.MessagingDestinationPartitionID(strconv.Itoa(d.Partition)),
				AttrDeliveryAttempt.Int(d.Attempt))
			opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(attrs...)}
			parent := ctx
			if len(d.Headers) > 0 {
				extracted := t.prop.Extract(ctx, propagation.MapCarrier(d.Headers))
				if creation := trace.SpanContextFromContext(extracted); creation.IsValid() {
					if t.parentChild {
						parent = extracted
					} else {
						opts = append(opts, trace.WithLinks(trace.Link{SpanContext: creation}))
					}
				}
			}
			ctx, span := t.tracer.Start(parent, OpProcess+" "+d.Topic, opts...)
			started := time.Now()
			defer func() {
				failed := err
				p := recover()
				if p != nil {
					failed = fmt.Errorf("handler panicked: %v", p)
				}
				metric := []attribute.KeyValue{semconv.MessagingDestinationName(d.Topic), semconv.MessagingConsumerGroupName(d.Subscriber)}
				if errors.Is(failed, inbox.ErrRelease) {
					// Handed back uncharged, to be claimed again: no failure.
					span.SetAttributes(AttrDeliveryReleased.Bool(true))
					failed = nil
				}
				if failed != nil {
					metric = append(metric, fail(span, failed))
				}
				t.process.Record(ctx, time.Since(started).Seconds(), OpProcess, System, metric...)
				span.End()
				if p != nil {
					panic(p) // the consumer's to recover, with its stack
				}
			}()
			return next.Handle(ctx, tx, d)
		})
	}
}

// OnConsumerBatch counts messaging.client.consumed.messages when a
// consumer's batch commits: every delivery handed to the application in
// it (handled, failed or dead, not the duplicates it dropped), by topic.
// Set it as inbox.Config.OnBatch.
func (t *Telemetry) OnConsumerBatch(info inbox.BatchInfo) {
	perTopic := make(map[string]int64)
	for _, list := range [][]*inbox.Delivery{info.Handled, info.Failed, info.Dead} {
		for _, d := range list {
			perTopic[d.Topic]++
		}
	}
	ctx := context.Background()
	for topic, n := range perTopic {
		t.consumed.Add(ctx, n, OpProcess, System,
			semconv.MessagingDestinationName(topic), semconv.MessagingConsumerGroupName(info.Subscriber))
	}
}
