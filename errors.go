package postbox

import (
	"errors"
	"fmt"
)

// ErrInvalid is matched (errors.Is) by every validation error postbox
// returns for bad input: names, sizes, headers, filters.
var ErrInvalid = errors.New("postbox: invalid input")

// ValidationError says which field of the input is wrong and why. Every
// postbox package returns one, as it is (never wrapped), for bad input.
type ValidationError struct {
	// Field is the input's Go path as the caller wrote it: a struct field
	// by its type (Message.Key, Message.Headers["trace"], Config.BatchSize,
	// Subscription.Filter), an argument by its name (subscriber, limit), an
	// element of a slice argument by the argument's name and index
	// (msgs[3].Key).
	Field  string
	Reason string
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("postbox: invalid %s: %s", e.Field, e.Reason)
}

// Is makes errors.Is(err, ErrInvalid) true for validation errors.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

func invalid(field, format string, args ...any) error {
	return &ValidationError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// permanentError marks a failure that retrying cannot fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return "permanent: " + e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as permanent: a handler that returns it sends the
// message straight to the dead letters, without retries. Use it for payloads
// that will never be valid (the invalid-message channel). Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err, or any error it wraps, was marked with
// Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}
