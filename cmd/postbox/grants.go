package main

import (
	"context"
	_ "embed"
	"fmt"
	"io/fs"
	"regexp"
	"strings"
	"text/template"

	"github.com/postbox-dev/postbox/schema"
)

// grantsSQL is the script `postbox grants` prints: a template over the role
// names, so that tests (roles are cluster-wide) can use names of their own.
//
//go:embed grants.sql
var grantsSQL string

var grantsTemplate = template.Must(template.New("grants").Funcs(template.FuncMap{"join": strings.Join}).Parse(grantsSQL))

const grantsHelp = `
Print the SQL that creates the NOLOGIN group roles PREFIX_producer,
PREFIX_relay, PREFIX_consumer and PREFIX_operator (PREFIX is --prefix,
default postbox) with exactly the privileges each needs on the current
schema, or run it with --apply:

  producer  insert into the outbox (outbox.Publish, Send, PublishBatch,
            SendBatch); it cannot read anything
  relay     move outbox rows into the inbox stream (or to a Sink), empty old
            slots (TRUNCATE), run the janitor
  consumer  claim, complete and fail deliveries (inbox.Consumer,
            inbox.HandleOnce); it cannot publish (grant the producer role too
            for handlers that do), replay or purge
  operator  dead letters (list, replay, purge), routing declarations, stats,
            the admin pages and doctor (a member of pg_monitor)

Grant them to your services' login roles (GRANT postbox_producer TO
orders_api). The script is idempotent: run it again after each upgrade. It
must run as the owner of the postbox schema (or a superuser), with CREATEROLE.`

// roleName is what --prefix may be: the roles' names are built from it
// without quoting.
var roleName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,40}$`)

// grantsScript renders the script for the roles named after prefix.
func grantsScript(prefix string) (string, error) {
	version, err := latestMigration()
	if err != nil {
		return "", err
	}
	slots := func(table string) string {
		s := make([]string, 8)
		for i := range s {
			s[i] = fmt.Sprintf("postbox.%s_%d", table, i)
		}
		return strings.Join(s, ", ")
	}
	data := struct {
		Version, VersionTable               string
		Producer, Relay, Consumer, Operator string
		Roles                               []string
		OutboxSlots, InboxSlots             string
	}{
		Version: version, VersionTable: schema.VersionTable,
		Producer: prefix + "_producer", Relay: prefix + "_relay", Consumer: prefix + "_consumer", Operator: prefix + "_operator",
		OutboxSlots: slots("outbox"), InboxSlots: slots("inbox"),
	}
	data.Roles = []string{data.Producer, data.Relay, data.Consumer, data.Operator}
	var b strings.Builder
	if err := grantsTemplate.Execute(&b, data); err != nil {
		return "", err
	}
	return b.String(), nil
}

// latestMigration is the version of the newest migration this binary
// carries, as its file name starts.
func latestMigration() (string, error) {
	files, err := fs.Glob(schema.FS, "*.sql")
	if err != nil || len(files) == 0 {
		return "", fmt.Errorf("grants: no migrations embedded: %v", err)
	}
	last := files[len(files)-1]
	v, _, _ := strings.Cut(last, "_")
	return strings.TrimLeft(v, "0"), nil
}

func (c *cli) grants(ctx context.Context, args []string) error {
	f := newFlags("grants", "postbox grants [--apply] [flags]", grantsHelp)
	g := f.common()
	apply := f.Bool("apply", false, "run the SQL instead of printing it")
	prefix := f.String("prefix", "postbox", "the roles' names start with this")
	pos, err := f.parse(c.stdout, args)
	if err != nil {
		return err
	}
	if err := f.noArgs(pos); err != nil {
		return err
	}
	if !roleName.MatchString(*prefix) {
		return f.usageErr("--prefix %q: want lower-case letters, digits and _ (a role name needing no quotes)", *prefix)
	}
	script, err := grantsScript(*prefix)
	if err != nil {
		return err
	}
	if !*apply {
		_, err := fmt.Fprint(c.stdout, script)
		return err
	}
	log, err := c.logger(f, g)
	if err != nil {
		return err
	}
	pool, err := c.open(ctx, f, g, poolOptions{app: "postbox-grants"})
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := checkSchema(ctx, pool); err != nil {
		return err
	}
	// No arguments: the simple protocol, which runs the whole script (its
	// own transaction included).
	if _, err := pool.Exec(ctx, script); err != nil {
		return fmt.Errorf("grants: %w", err)
	}
	log.Info("roles granted", "producer", *prefix+"_producer", "relay", *prefix+"_relay",
		"consumer", *prefix+"_consumer", "operator", *prefix+"_operator")
	return nil
}
