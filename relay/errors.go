package relay

import (
	"errors"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// transient reports whether a statement failed for a reason of its own
// (the connection, the server going away, a lock or serialization
// conflict) rather than for something in the rows it held: such a batch is
// simply tried again, as it is.
func transient(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return true // no answer from the server: the connection failed
	}
	switch {
	case strings.HasPrefix(pgErr.Code, "08"), // connection exception
		strings.HasPrefix(pgErr.Code, "53"),          // insufficient resources
		strings.HasPrefix(pgErr.Code, "57P"),         // the server is shutting down or starting
		strings.HasPrefix(pgErr.Code, "40"),          // serialization failure, deadlock
		pgErr.Code == "55P03",                        // lock not available
		pgErr.Code == "25P03", pgErr.Code == "25P04": // session or transaction timeouts
		return true
	}
	return false
}

// statementTimeout reports whether err is a statement cancelled by
// statement_timeout (57014).
func statementTimeout(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "57014"
}
