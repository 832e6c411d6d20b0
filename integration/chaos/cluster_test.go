package chaos

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/postbox-dev/postbox/schema"
)

// cluster is a PostgreSQL cluster of the test's own, in a temporary
// directory, listening on a free loopback port: the long form restarts it,
// which it must not do to the server other tests share.
type cluster struct {
	bin  string // initdb, pg_ctl and postgres
	dir  string // owned by the server's OS user
	data string
	port int
	opts string // the server's settings, given on its command line
	// runAs is the OS user the server runs as ("" for the current one):
	// initdb refuses to run as root.
	runAs string
}

const howToInstall = `the long chaos test runs a PostgreSQL cluster of its own (it restarts it) and needs the server binaries initdb, pg_ctl and postgres:
  install them (Debian/Ubuntu: apt-get install postgresql-15), or set POSTBOX_PG_BIN to the directory holding them;
  when the tests run as root, the server runs as the OS user postgres (through runuser), which must exist`

// serverBin finds the directory of initdb, pg_ctl and postgres.
func serverBin() (string, error) {
	var tried []string
	candidates := []string{os.Getenv("POSTBOX_PG_BIN"), "/usr/lib/postgresql/15/bin"}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		candidates = append(candidates, strings.TrimSpace(string(out)))
	}
	for _, dir := range candidates {
		if dir == "" {
			continue
		}
		ok := true
		for _, b := range []string{"initdb", "pg_ctl", "postgres"} {
			if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
				ok = false
				tried = append(tried, filepath.Join(dir, b)+": missing")
				break
			}
		}
		if ok {
			return dir, nil
		}
	}
	return "", fmt.Errorf("no PostgreSQL server binaries found (%s)", strings.Join(tried, "; "))
}

// startCluster creates and starts the cluster; it is stopped and removed
// when t ends.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	bin, err := serverBin()
	if err != nil {
		t.Fatalf("%v\n%s", err, howToInstall)
	}
	c := &cluster{bin: bin}
	dir, err := os.MkdirTemp("", "postbox-chaos-pg-")
	if err != nil {
		t.Fatal(err)
	}
	c.dir, c.data = dir, filepath.Join(dir, "data")
	t.Cleanup(func() { os.RemoveAll(dir) })
	if os.Geteuid() == 0 {
		c.runAs = "postgres"
		u, err := user.Lookup(c.runAs)
		if err != nil {
			t.Fatalf("running as root, the server must run as another user: %v\n%s", err, howToInstall)
		}
		if _, err := exec.LookPath("runuser"); err != nil {
			t.Fatalf("running as root, the server is started through runuser: %v\n%s", err, howToInstall)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := c.command("initdb", "-D", c.data, "-U", "postgres", "--auth=trust",
		"--encoding=UTF8", "--locale=C", "--no-sync").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	// A free port: another process may take it before the server does, so
	// starting is tried a few times.
	var startErr error
	for range 5 {
		if c.port, err = freePort(); err != nil {
			t.Fatal(err)
		}
		c.opts = fmt.Sprintf("-c port=%d -c listen_addresses=127.0.0.1 -c unix_socket_directories=%s"+
			" -c max_connections=200 -c shared_buffers=128MB -c fsync=off -c full_page_writes=off"+
			" -c synchronous_commit=on -c log_min_messages=warning", c.port, c.dir)
		if startErr = c.pgctl("start", "-o", c.opts); startErr == nil {
			break
		}
	}
	if startErr != nil {
		t.Fatalf("start the private cluster: %v\nserver log:\n%s", startErr, tail(filepath.Join(c.dir, "server.log"), 30))
	}
	t.Cleanup(func() {
		if err := c.pgctl("stop", "-m", "immediate"); err != nil {
			t.Errorf("stop the private cluster: %v", err)
		}
	})
	return c
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// command runs one of the server binaries as the server's OS user.
func (c *cluster) command(name string, args ...string) *exec.Cmd {
	path := filepath.Join(c.bin, name)
	if c.runAs == "" {
		return exec.Command(path, args...)
	}
	return exec.Command("runuser", append([]string{"-u", c.runAs, "--", path}, args...)...)
}

// pgctl runs pg_ctl on the cluster, waiting for it to finish.
func (c *cluster) pgctl(action string, args ...string) error {
	all := append([]string{action, "-D", c.data, "-l", filepath.Join(c.dir, "server.log"), "-w", "-t", "120"}, args...)
	out, err := c.command("pg_ctl", all...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl %s: %v\n%s", action, err, out)
	}
	return nil
}

// restart crashes the server and starts it again: every session ends and
// the server recovers from its WAL, as after a power cut of the server
// process (the machine's page cache survives, so fsync = off is safe).
func (c *cluster) restart() error {
	return c.pgctl("restart", "-m", "immediate", "-o", c.opts)
}

func (c *cluster) url(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, db)
}

// createDatabase creates db, migrates it to the postbox schema and returns
// its URL.
func (c *cluster) createDatabase(t *testing.T, ctx context.Context, db string) string {
	t.Helper()
	admin, err := pgx.Connect(ctx, c.url("postgres"))
	if err != nil {
		t.Fatalf("connect to the private cluster: %v", err)
	}
	defer admin.Close(context.Background())
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{db}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	url := c.url(db)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := schema.Migrate(ctx, pool); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return url
}

// waitUp waits until the server answers again after a restart.
func (c *cluster) waitUp(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		conn, err := pgx.Connect(ctx, c.url("postgres"))
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the private cluster does not answer after %s: %w", limit, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
