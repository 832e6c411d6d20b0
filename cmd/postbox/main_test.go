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

// The tests run the CLI in process, as main does (newCLI(...).run), so
// they run under -race with the rest and build nothing. Only what needs a
// process of its own, a signal, runs the built binary (startBinary).

// binaryDir holds the binary, built on first use by startBinary.
var binaryDir string

func TestMain(m *testing.M) {
	os.Exit(withBinaryDir(m))
}

func withBinaryDir(m *testing.M) int {
	dir, err := os.MkdirTemp("", "postbox-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binaryDir = dir
	return m.Run()
}

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// builtBinary builds the postbox binary once per test run.
func builtBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		path := filepath.Join(binaryDir, "postbox")
		out, err := exec.Command("go", "build", "-o", path, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("building the postbox binary: %v\n%s", err, out)
			return
		}
		binary = path
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

// getenv is the environment of the CLI: this process's, without any
// database URL, plus extra (KEY=value each).
func getenv(extra ...string) func(string) string {
	set := make(map[string]string, len(extra))
	for _, kv := range extra {
		k, v, _ := strings.Cut(kv, "=")
		set[k] = v
	}
	return func(k string) string {
		if v, ok := set[k]; ok {
			return v
		}
		if k == "DATABASE_URL" || k == "POSTBOX_DATABASE_URL" {
			return ""
		}
		return os.Getenv(k)
	}
}

// env is getenv as the environment of the binary.
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

// run runs the CLI to completion with args and environment extra.
func run(t *testing.T, extra []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := newCLI(&stdout, &stderr, getenv(extra...)).run(ctx, args)
	res := result{stdout: stdout.String(), stderr: stderr.String(), code: code}
	if ctx.Err() != nil {
		t.Fatalf("postbox %s: still running after 30s (exit %d)\nstderr: %s", strings.Join(args, " "), code, res.stderr)
	}
	return res
}

// runOK runs the CLI against the database at url and fails the test
// unless it exits 0. It returns stdout.
func runOK(t *testing.T, url string, args ...string) string {
	t.Helper()
	res := run(t, []string{"POSTBOX_DATABASE_URL=" + url}, args...)
	if res.code != 0 {
		t.Fatalf("postbox %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), res.code, res.stdout, res.stderr)
	}
	return res.stdout
}

// runJSON runs the CLI and decodes its stdout into v.
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
// scanned as it arrives: the CLI in process (start), or the binary
// (startBinary) where a test sends it a signal.
type process struct {
	cmd    *exec.Cmd // the binary's; nil in process
	cancel context.CancelFunc
	done   chan struct{} // closed when it has exited
	err    error         // how it exited, once done: nil for status 0

	mu     sync.Mutex
	stderr bytes.Buffer
	lines  chan string // stderr lines, for waitLog; dropped when full
}

// start runs the CLI in process with args against the database at url,
// until the test ends (which cancels its context, as SIGTERM does).
func start(t *testing.T, url string, args ...string) *process {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	p := newProcess(cancel)
	stderr, w := io.Pipe()
	code := make(chan int, 1)
	go func() {
		code <- newCLI(io.Discard, w, getenv("POSTBOX_DATABASE_URL="+url)).run(ctx, args)
		w.Close()
	}()
	go func() {
		p.scan(stderr)
		p.exited(nil, <-code)
	}()
	t.Cleanup(func() {
		cancel()
		<-p.done
	})
	return p
}

// startBinary runs the built binary with args against the database at
// url; the test ends it with stop (SIGTERM), or its end kills it.
func startBinary(t *testing.T, url string, args ...string) *process {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	cmd := exec.CommandContext(ctx, builtBinary(t), args...)
	cmd.Env = env("POSTBOX_DATABASE_URL=" + url)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	p := newProcess(cancel)
	p.cmd = cmd
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		p.scan(stderr)
		p.exited(cmd.Wait(), 0)
	}()
	t.Cleanup(func() {
		cancel() // kills it if still running
		<-p.done
	})
	return p
}

func newProcess(cancel context.CancelFunc) *process {
	return &process{cancel: cancel, done: make(chan struct{}), lines: make(chan string, 1000)}
}

// scan reads stderr to its end, keeping it and passing on its lines.
func (p *process) scan(stderr io.Reader) {
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
}

// exited records how the process ended, once its stderr is read: the
// binary's Wait error, or the CLI's exit status.
func (p *process) exited(waitErr error, code int) {
	if waitErr == nil && code != 0 {
		waitErr = fmt.Errorf("exit status %d", code)
	}
	p.err = waitErr
	close(p.lines)
	close(p.done)
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
