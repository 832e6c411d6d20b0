// Package schema migrates a PostgreSQL database to the postbox schema.
//
// The migrations are plain goose SQL files embedded in the binary (FS), so
// users may also run them with their own tools. Every object lives in the
// PostgreSQL schema "postbox"; goose records versions in the table
// public.postbox_schema_version. Migrate takes a session advisory lock, so
// several processes may migrate at once: one applies, the others wait and
// then find nothing to do.
//
//	if err := schema.Migrate(ctx, pool); err != nil { ... }
//
// Migrations are append-only: a released migration is never edited, since
// databases out there have applied it as it was. Every schema change is a
// new numbered file with a working down (tested with data in
// integration/migrate_test.go), so Down, and goose's own down-to, take a
// database back without losing a row.
package schema
