package main

import (
	"context"
	"fmt"
	"io"

	"github.com/postbox-dev/postbox/schema"
)

func (c *cli) migrate(ctx context.Context, args []string) error {
	f := newFlags("migrate", "postbox migrate up|down|status [flags]", `
Manage the postbox schema (every object lives in the PostgreSQL schema
"postbox"; versions are recorded in public.`+schema.VersionTable+`).

  up      apply every pending migration (safe to run from several processes)
  down    roll back the most recent migration (needs --yes); rolling back
          the first one drops the postbox schema with every message in it
  status  list the migrations and whether each is applied`)
	g := f.common()
	yes := f.Bool("yes", false, "confirm 'down'")
	asJSON := f.Bool("json", false, "status: print JSON instead of a table")
	pos, err := f.parse(c.stdout, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return f.usageErr("migrate: want one of up, down, status")
	}
	action := pos[0]
	switch action {
	case "up", "status":
	case "down":
		if !*yes {
			return f.usageErr("migrate down changes the schema under running services, and rolling back the first migration deletes every message: pass --yes to confirm")
		}
	default:
		return f.usageErr("migrate: unknown action %q: want up, down or status", action)
	}
	if _, err := c.logger(f, g); err != nil {
		return err
	}
	pool, err := c.open(ctx, f, g, poolOptions{app: "postbox-migrate"})
	if err != nil {
		return err
	}
	defer pool.Close()

	before, err := schema.Status(ctx, pool)
	if err != nil {
		return fmt.Errorf("migrate %s: %w", action, err)
	}
	switch action {
	case "status":
		return c.printMigrations(before, *asJSON)
	case "up":
		if err := schema.Migrate(ctx, pool); err != nil {
			return fmt.Errorf("migrate up: %w", err)
		}
	case "down":
		if err := schema.Down(ctx, pool); err != nil {
			return fmt.Errorf("migrate down: %w", err)
		}
	}
	after, err := schema.Status(ctx, pool)
	if err != nil {
		return fmt.Errorf("migrate %s: %w", action, err)
	}
	changed := 0
	for i := range after {
		if after[i].Applied != before[i].Applied {
			changed++
			verb := "applied"
			if action == "down" {
				verb = "rolled back"
			}
			fmt.Fprintf(c.stdout, "%s %d %s\n", verb, after[i].Version, after[i].Name)
		}
	}
	if changed == 0 {
		fmt.Fprintln(c.stdout, "nothing to do")
	}
	fmt.Fprintf(c.stdout, "schema version %d\n", currentVersion(after))
	return nil
}

func currentVersion(ms []schema.Migration) int64 {
	var v int64
	for _, m := range ms {
		if m.Applied {
			v = max(v, m.Version)
		}
	}
	return v
}

func (c *cli) printMigrations(ms []schema.Migration, asJSON bool) error {
	if asJSON {
		type row struct {
			Version int64  `json:"version"`
			Name    string `json:"name"`
			Applied bool   `json:"applied"`
		}
		rows := make([]row, len(ms))
		for i, m := range ms {
			rows[i] = row{m.Version, m.Name, m.Applied}
		}
		return writeJSON(c.stdout, rows)
	}
	return writeTable(c.stdout, func(w io.Writer) {
		fmt.Fprintln(w, "VERSION\tNAME\tSTATE")
		for _, m := range ms {
			state := "pending"
			if m.Applied {
				state = "applied"
			}
			fmt.Fprintf(w, "%d\t%s\t%s\n", m.Version, m.Name, state)
		}
	})
}
