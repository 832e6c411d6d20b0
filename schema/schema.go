package schema

import (
	"context"
	"database/sql"
	"embed"
	"fmt"
	"io/fs"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/postbox-dev/postbox/internal/invalid"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed migrations/*.sql
var embedded embed.FS

// FS holds the goose migrations, one .sql file per version, at its root.
var FS fs.FS = mustSub(embedded, "migrations")

// VersionTable is where goose records applied versions.
const VersionTable = "postbox_schema_version"

func mustSub(f fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(f, dir)
	if err != nil {
		panic(err)
	}
	return sub
}

// Migration is one migration's state.
type Migration struct {
	Version int64
	Name    string
	Applied bool
}

// Migrate applies every pending migration.
func Migrate(ctx context.Context, pool *pgxpool.Pool) error {
	return withProvider(pool, func(p *goose.Provider) error {
		_, err := p.Up(ctx)
		return err
	})
}

// Down rolls back the most recent migration.
func Down(ctx context.Context, pool *pgxpool.Pool) error {
	return withProvider(pool, func(p *goose.Provider) error {
		_, err := p.Down(ctx)
		return err
	})
}

// DownTo rolls back every migration above version, newest first; DownTo 0
// is Reset.
func DownTo(ctx context.Context, pool *pgxpool.Pool, version int64) error {
	if version < 0 {
		return invalid.Errorf("version", "%d is negative", version)
	}
	return withProvider(pool, func(p *goose.Provider) error {
		_, err := p.DownTo(ctx, version)
		return err
	})
}

// Reset rolls back every migration, removing the postbox schema and its data.
func Reset(ctx context.Context, pool *pgxpool.Pool) error {
	return withProvider(pool, func(p *goose.Provider) error {
		_, err := p.DownTo(ctx, 0)
		return err
	})
}

// Status lists every migration and whether it is applied.
func Status(ctx context.Context, pool *pgxpool.Pool) ([]Migration, error) {
	var out []Migration
	err := withProvider(pool, func(p *goose.Provider) error {
		st, err := p.Status(ctx)
		if err != nil {
			return err
		}
		for _, s := range st {
			out = append(out, Migration{
				Version: s.Source.Version,
				Name:    s.Source.Path,
				Applied: s.State == goose.StateApplied,
			})
		}
		return nil
	})
	return out, err
}

func withProvider(pool *pgxpool.Pool, run func(*goose.Provider) error) error {
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	p, err := newProvider(db)
	if err != nil {
		return err
	}
	if err := run(p); err != nil {
		return fmt.Errorf("schema: %w", err)
	}
	return nil
}

func newProvider(db *sql.DB) (*goose.Provider, error) {
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return nil, fmt.Errorf("schema: locker: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, FS,
		goose.WithTableName(VersionTable),
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
	)
	if err != nil {
		return nil, fmt.Errorf("schema: goose: %w", err)
	}
	return p, nil
}
