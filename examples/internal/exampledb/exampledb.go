// Package exampledb finds a PostgreSQL server for the example programs and
// gives each example a database of its own, dropped, recreated and migrated
// on every run: the server of DATABASE_URL if set, else one on
// 127.0.0.1:5432 that accepts user postgres without a password, else a
// container started with testcontainers-go.
package exampledb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"

	"github.com/postbox-dev/postbox/schema"
)

// Example names an example program and the only database it creates,
// drops and writes to.
type Example struct {
	Program  string // its directory under examples/, e.g. "orders"
	Database string // e.g. "postbox_orders_example"
}

// localURL is tried when DATABASE_URL is not set.
const localURL = "postgres://postgres@127.0.0.1:5432/postgres"

// maintenanceDatabase is where the example connects to drop and create
// its database.
const maintenanceDatabase = "postgres"

// howToProvide says what the example needs when no server answers.
func (e Example) howToProvide() string {
	return `provide PostgreSQL 13 or newer in one of these ways:
  - set DATABASE_URL to a server where the user may CREATE DATABASE, e.g.
    DATABASE_URL=postgres://postgres:secret@db.example:5432/postgres go run ./examples/` + e.Program + `
  - run a server on 127.0.0.1:5432 that accepts user postgres without a password;
  - make a Docker engine available, so testcontainers-go can start postgres:17-alpine.
The example only touches its own database, ` + e.Database + `.`
}

// FindServer returns the connection string of a PostgreSQL server: from
// DATABASE_URL if set, else localURL, else a container it starts. stop
// removes that container; it does nothing for the other two.
func (e Example) FindServer(ctx context.Context, log *slog.Logger) (connString string, stop func(), err error) {
	noop := func() {}
	if env := os.Getenv("DATABASE_URL"); env != "" {
		if err := ping(ctx, env); err != nil {
			return "", nil, fmt.Errorf("DATABASE_URL is set but the server does not answer: %w\n%s", err, e.howToProvide())
		}
		return env, noop, nil
	}
	localErr := ping(ctx, localURL)
	if localErr == nil {
		return localURL, noop, nil
	}
	log.Info("no server on 127.0.0.1:5432; starting one with testcontainers", "reason", localErr)
	connString, stop, err = startContainer(ctx, e.Program)
	if err != nil {
		return "", nil, fmt.Errorf("no PostgreSQL server found:\n  127.0.0.1:5432: %v\n  testcontainers: %v\n%s",
			localErr, err, e.howToProvide())
	}
	return connString, stop, nil
}

func ping(ctx context.Context, connString string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.Ping(ctx)
}

// startContainer starts PostgreSQL in Docker and returns its connection
// string and a function that removes the container.
func startContainer(ctx context.Context, program string) (connString string, stop func(), err error) {
	defer func() {
		// testcontainers-go may panic when no Docker engine is reachable.
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	c, err := tcpostgres.Run(ctx, "postgres:17-alpine",
		tcpostgres.WithUsername("postgres"),
		tcpostgres.WithPassword("postgres"),
		tcpostgres.WithDatabase(maintenanceDatabase),
		tcpostgres.BasicWaitStrategies(),
	)
	stop = func() {
		if err := testcontainers.TerminateContainer(c); err != nil {
			fmt.Fprintln(os.Stderr, program+": remove container:", err)
		}
	}
	if err != nil {
		stop()
		return "", nil, err
	}
	connString, err = c.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		stop()
		return "", nil, err
	}
	return connString, stop, nil
}

// Prepare drops and recreates e.Database on the server, so every run
// starts clean, migrates it to the postbox schema, and returns its
// connection string.
func (e Example) Prepare(ctx context.Context, serverConnString string) (string, error) {
	adminConnString, err := WithDatabase(serverConnString, maintenanceDatabase)
	if err != nil {
		return "", err
	}
	admin, err := pgx.Connect(ctx, adminConnString)
	if err != nil {
		return "", fmt.Errorf("connect to database %q: %w", maintenanceDatabase, err)
	}
	defer admin.Close(context.Background())

	ident := pgx.Identifier{e.Database}.Sanitize()
	// FORCE ends sessions still connected to the previous run's database.
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+ident+" WITH (FORCE)"); err != nil {
		return "", fmt.Errorf("drop database %s: %w", e.Database, err)
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+ident); err != nil {
		return "", fmt.Errorf("create database %s (the user needs CREATEDB): %w", e.Database, err)
	}

	connString, err := WithDatabase(serverConnString, e.Database)
	if err != nil {
		return "", err
	}
	pool, err := pgxpool.New(ctx, connString)
	if err != nil {
		return "", err
	}
	defer pool.Close()
	if err := schema.Migrate(ctx, pool); err != nil {
		return "", fmt.Errorf("migrate %s: %w", e.Database, err)
	}
	return connString, nil
}

// WithDatabase returns connString with its database replaced by name. It
// accepts both forms pgx does: a postgres:// URL and keyword=value pairs.
func WithDatabase(connString, name string) (string, error) {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		u, err := url.Parse(connString)
		if err != nil {
			return "", fmt.Errorf("parse connection string: %w", err)
		}
		u.Path = "/" + name
		u.RawPath = ""
		return u.String(), nil
	}
	if strings.Contains(connString, "://") {
		return "", errors.New("connection string: want a postgres:// URL or keyword=value pairs")
	}
	// keyword=value: a later dbname overrides an earlier one.
	return strings.TrimSpace(connString + " dbname=" + name), nil
}
