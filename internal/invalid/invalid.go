// Package invalid builds the error every postbox package returns for bad
// input: a *postbox.ValidationError, which matches postbox.ErrInvalid.
//
// The field is the input's Go path as the caller wrote it: a struct field
// by its type (Config.BatchSize, Message.Headers["trace"],
// Subscription.Filter), an argument by its name (subscriber, limit), an
// element of a slice argument by the argument's name and index
// (msgs[3].Key). A validation error is returned as it is, never wrapped,
// so its text carries the "postbox: " prefix once.
package invalid

import (
	"fmt"

	"github.com/postbox-dev/postbox"
)

// Errorf returns a *postbox.ValidationError for field, its reason
// formatted as fmt.Sprintf does.
func Errorf(field, format string, args ...any) error {
	return &postbox.ValidationError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// Nil is the error for a nil argument or field.
func Nil(field string) error {
	return &postbox.ValidationError{Field: field, Reason: "nil"}
}
