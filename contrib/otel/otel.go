package otelpostbox

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/semconv/v1.43.0/messagingconv"
	"go.opentelemetry.io/otel/trace"

	"github.com/postbox-dev/postbox"
	"github.com/postbox-dev/postbox/outbox"
)

// ScopeName is the instrumentation scope of the tracer and the meter.
const ScopeName = "github.com/postbox-dev/postbox/contrib/otel"

// System is the value of messaging.system on every span and metric.
const System = "postbox"

// Operation names (messaging.operation.name). Their operation types
// (messaging.operation.type) are "send", "create", "process" and, for the
// relay, "send": it sends the batch on to the subscribers' inboxes.
const (
	OpSend    = "send"
	OpCreate  = "create"
	OpProcess = "process"
	OpRelay   = "relay"
)

// Attributes of postbox's own, in the messaging.postbox namespace the
// conventions reserve for a system.
const (
	AttrMessageKey       = attribute.Key("messaging.postbox.message.key")
	AttrMessageType      = attribute.Key("messaging.postbox.message.type")
	AttrQueue            = attribute.Key("messaging.postbox.destination.queue")
	AttrDeliveryAttempt  = attribute.Key("messaging.postbox.delivery.attempt")
	AttrDeliveryReleased = attribute.Key("messaging.postbox.delivery.released")
	AttrRelayDelivered   = attribute.Key("messaging.postbox.relay.delivered")
	AttrRelayDuplicates  = attribute.Key("messaging.postbox.relay.duplicates")
	AttrRelayNoRoute     = attribute.Key("messaging.postbox.relay.no_route")
	AttrRelayDropped     = attribute.Key("messaging.postbox.relay.dropped")
	AttrRelaySubscribers = attribute.Key("messaging.postbox.relay.subscribers")
)

// Config configures Telemetry. Zero values mean the defaults.
type Config struct {
	// TracerProvider makes the tracer. Default otel.GetTracerProvider().
	TracerProvider trace.TracerProvider
	// MeterProvider makes the meter. Default otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
	// Propagator writes a message's creation context into its headers and
	// reads it back. Default W3C Trace Context (traceparent, tracestate);
	// a composite with propagation.Baggage carries baggage too.
	Propagator propagation.TextMapPropagator
	// ParentChild makes a process span the child of its message's creation
	// context (and a relay span the child of its batch's, when the batch
	// holds one message), so producer and consumer share one trace. By
	// default, as the conventions recommend, a process span starts a trace
	// of its own (or continues the handler's context) and links to the
	// creation context.
	ParentChild bool
	// Outbox writes the producer methods' messages, with its limits.
	Outbox outbox.Outbox
}

// Telemetry traces and measures postbox's producers, relays and
// consumers, after the OpenTelemetry semantic conventions for messaging.
type Telemetry struct {
	tracer      trace.Tracer
	prop        propagation.TextMapPropagator
	parentChild bool
	outbox      outbox.Outbox

	sent     messagingconv.ClientSentMessages
	consumed messagingconv.ClientConsumedMessages
	process  messagingconv.ProcessDuration
}

// New returns Telemetry with cfg.
func New(cfg Config) (*Telemetry, error) {
	if cfg.TracerProvider == nil {
		cfg.TracerProvider = otel.GetTracerProvider()
	}
	if cfg.MeterProvider == nil {
		cfg.MeterProvider = otel.GetMeterProvider()
	}
	if cfg.Propagator == nil {
		cfg.Propagator = propagation.TraceContext{}
	}
	t := &Telemetry{
		tracer:      cfg.TracerProvider.Tracer(ScopeName, trace.WithSchemaURL(semconv.SchemaURL)),
		prop:        cfg.Propagator,
		parentChild: cfg.ParentChild,
		outbox:      cfg.Outbox,
	}
	meter := cfg.MeterProvider.Meter(ScopeName, metric.WithSchemaURL(semconv.SchemaURL))
	var err, e error
	t.sent, e = messagingconv.NewClientSentMessages(meter)
	err = errors.Join(err, e)
	t.consumed, e = messagingconv.NewClientConsumedMessages(meter)
	err = errors.Join(err, e)
	t.process, e = messagingconv.NewProcessDuration(meter)
	err = errors.Join(err, e)
	if err != nil {
		return nil, fmt.Errorf("otelpostbox: instruments: %w", err)
	}
	return t, nil
}

// common are the attributes of every span and metric.
func common(op string, opType attribute.KeyValue) []attribute.KeyValue {
	return []attribute.KeyValue{
		semconv.MessagingSystemKey.String(System),
		semconv.MessagingOperationName(op),
		opType,
	}
}

// messageAttrs describe one message.
func messageAttrs(msg *postbox.Message) []attribute.KeyValue {
	attrs := []attribute.KeyValue{
		semconv.MessagingDestinationName(msg.Topic),
		semconv.MessagingMessageBodySize(len(msg.Payload)),
	}
	if msg.ID != [16]byte{} {
		attrs = append(attrs, semconv.MessagingMessageID(msg.ID.String()))
	}
	if c := msg.Headers[postbox.HeaderCorrelationID]; c != "" {
		attrs = append(attrs, semconv.MessagingMessageConversationID(c))
	}
	if msg.Key != "" {
		attrs = append(attrs, AttrMessageKey.String(msg.Key))
	}
	if msg.Type != "" {
		attrs = append(attrs, AttrMessageType.String(msg.Type))
	}
	return attrs
}

// errorType is error.type for err: "permanent" for postbox.Permanent,
// "timeout" for an expired context, else the error's type as the
// conventions' Go helper names it. Low cardinality, as the conventions ask.
func errorType(err error) attribute.KeyValue {
	switch {
	case postbox.IsPermanent(err):
		return semconv.ErrorTypeKey.String("permanent")
	case errors.Is(err, context.DeadlineExceeded):
		return semconv.ErrorTypeKey.String("timeout")
	case errors.Is(err, postbox.ErrInvalid):
		return semconv.ErrorTypeKey.String("invalid")
	}
	return semconv.ErrorType(err)
}

// fail marks span as failed with err.
func fail(span trace.Span, err error) attribute.KeyValue {
	et := errorType(err)
	span.RecordError(err)
	span.SetStatus(codes.Error, err.Error())
	span.SetAttributes(et)
	return et
}
