package main

import (
	"io"

	"github.com/postbox-dev/postbox/internal/redact"
)

// redactor is what every byte the commands print to stderr passes through:
// see package redact.
type redactor = redact.Writer

func newRedactor(w io.Writer) *redactor { return redact.NewWriter(w) }

// The environment variables whose passwords are registered with the
// redactor before the command line is even parsed.
var secretEnv = struct{ urls, plain []string }{
	urls:  []string{"POSTBOX_DATABASE_URL", "DATABASE_URL"},
	plain: []string{"PGPASSWORD", envAdminToken, envAdminPassword},
}

// registerSecrets tells the stderr redactor every password in sight before
// anything is printed: those of the database URLs in the environment (any
// form), PGPASSWORD, the admin credentials, and the value of every
// --database-url on the command line, even one the command never reaches.
func (c *cli) registerSecrets(args []string) {
	for _, env := range secretEnv.urls {
		c.stderr.AddURL(c.getenv(env))
	}
	for _, env := range secretEnv.plain {
		c.stderr.Add(c.getenv(env))
	}
	c.stderr.AddFlagURLs(args, "database-url")
}
