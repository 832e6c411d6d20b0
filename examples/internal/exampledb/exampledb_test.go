package exampledb

import (
	"testing"

	"github.com/jackc/pgx/v5"
)

const database = "postbox_orders_example"

func TestWithDatabase(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"postgres://postgres@127.0.0.1:5432/postgres", "postgres://postgres@127.0.0.1:5432/" + database},
		{"postgres://u:p%40ss@db:5432/app?sslmode=disable", "postgres://u:p%40ss@db:5432/" + database + "?sslmode=disable"},
		{"postgresql://db", "postgresql://db/" + database},
		{"host=db user=u dbname=app", "host=db user=u dbname=app dbname=" + database},
		{"", "dbname=" + database},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := WithDatabase(tt.in, database)
			if err != nil {
				t.Errorf("WithDatabase(%q): %v", tt.in, err)
				return
			}
			if got != tt.want {
				t.Errorf("WithDatabase(%q) = %q, want %q", tt.in, got, tt.want)
			}
			cfg, err := pgx.ParseConfig(got)
			if err != nil {
				t.Errorf("pgx cannot parse %q: %v", got, err)
				return
			}
			if cfg.Database != database {
				t.Errorf("pgx reads database %q from %q, want %q", cfg.Database, got, database)
			}
		})
	}
	if _, err := WithDatabase("mysql://db/app", database); err == nil {
		t.Error("WithDatabase accepted a mysql:// URL")
	}
}
