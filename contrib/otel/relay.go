package otelpostbox

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/relay"
)

// OnRelayBatch records a "relay" CLIENT span for each committed relay
// batch, spanning its statement, with links to the creation contexts of
// the messages it moved (relay.BatchInfo carries up to 128 traceparents).
// With Config.ParentChild, a batch that moved one traced message is that
// message's child instead. Set it as relay.Config.OnBatch.
func (t *Telemetry) OnRelayBatch(info relay.BatchInfo) {
	end := time.Now()
	var links []trace.Link
	for _, tp := range info.Traceparents {
		// BatchInfo holds W3C traceparents whatever the propagator.
		ctx := propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{postbox.HeaderTraceParent: tp})
		if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc})
		}
	}
	parent := context.Background()
	if t.parentChild && len(links) == 1 {
		parent = trace.ContextWithRemoteSpanContext(parent, links[0].SpanContext)
		links = nil
	}
	attrs := append(common(OpRelay, semconv.MessagingOperationTypeSend),
		semconv.MessagingBatchMessageCount(info.Claimed),
		AttrRelayDelivered.Int(info.Delivered),
		AttrRelayDuplicates.Int(info.Duplicates),
		AttrRelayNoRoute.Int(info.NoRoute),
		AttrRelayDropped.Int(info.Dropped))
	if len(info.Subscribers) > 0 {
		attrs = append(attrs, AttrRelaySubscribers.StringSlice(info.Subscribers))
	}
	_, span := t.tracer.Start(parent, OpRelay, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithTimestamp(end.Add(-info.Duration)), trace.WithLinks(links...), trace.WithAttributes(attrs...))
	span.End(trace.WithTimestamp(end))
}
