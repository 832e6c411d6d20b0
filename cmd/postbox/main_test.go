package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// binary is the postbox binary built once for this test run.
var binary string

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	dir, err := os.MkdirTemp("", "postbox-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "postbox")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "building the postbox binary: %v\n", err)
		return 1
	}
	return m.Run()
}

// env is the environment of the binary: this process's, without any
// database URL, plus extra.
func env(extra ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DATABASE_URL=") && !strings.HasPrefix(kv, "POSTBOX_DATABASE_URL=") {
			out = append(out, kv)
		}
	}
	return append(out, extra...)
}

type result struct {
	stdout, stderr string
	code           int
}

// run runs the binary to completion with args and environment extra.
func run(t *testing.T, extra []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = env(extra...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := result{stdout: stdout.String(), stderr: stderr.String(), code: cmd.ProcessState.ExitCode()}
	if err != nil && res.code <= 0 {
		t.Fatalf("postbox %s: %v\nstderr: %s", strings.Join(args, " "), err, res.stderr)
	}
	return res
}

// runOK runs the binary against the database at url and fails the test
// unless it exits 0. It returns stdout.
func runOK(t *testing.T, url string, args ...string) string {
	t.Helper()
	res := run(t, []string{"POSTBOX_DATABASE_URL=" + url}, args...)
	if res.code != 0 {
		t.Fatalf("postbox %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), res.code, res.stdout, res.stderr)
	}
	return res.stdout
}

// runJSON runs the binary and decodes its stdout into v.
func runJSON(t *testing.T, url string, v any, args ...string) {
	t.Helper()
	out := runOK(t, url, append(args, "--json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		t.Fatalf("postbox %s --json: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func openPool(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// process is a long-running postbox, such as a relay, whose stderr is
// scanned as it arrives.
type process struct {
	cmd    *exec.Cmd
	cancel context.CancelFunc
	done   chan struct{} // closed when the process has exited
	err    error         // Wait's result, once done

	mu     sync.Mutex
	stderr bytes.Buffer
	lines  chan string // stderr lines, for waitFor; dropped when full
}

func start(t *testing.T, url string, args ...string) *process {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = env("POSTBOX_DATABASE_URL=" + url)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &process{cmd: cmd, cancel: cancel, done: make(chan struct{}), lines: make(chan string, 1000)}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.mu.Lock()
			p.stderr.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		io.Copy(io.Discard, stderr)
		p.err = cmd.Wait()
		close(p.lines)
		close(p.done)
	}()
	t.Cleanup(func() {
		cancel() // kills it if still running
		<-p.done
	})
	return p
}

func (p *process) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stderr.String()
}

// waitLog returns the attribute attr of the first JSON log line with message
// msg.
func (p *process) waitLog(t *testing.T, msg, attr string) string {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				t.Fatalf("postbox exited before logging %q: %v\n%s", msg, p.err, p.log())
			}
			var rec map[string]any
			if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
				return fmt.Sprint(rec[attr])
			}
		case <-timeout:
			t.Fatalf("no %q log line within 20s:\n%s", msg, p.log())
		}
	}
}
