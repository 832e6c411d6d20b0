package chaos

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// fleet runs the role processes and starts each again when it dies, until
// stop. A process that exits without being killed (a panic, a data race
// report, a role that gives up) is recorded as unexpected: the run fails.
type fleet struct {
	t    *testing.T
	exe  string
	dir  string // the processes' stderr logs
	list []*proc

	stopping atomic.Bool
	kills    atomic.Int64
	mu       sync.Mutex
	exits    []string // unexpected exits
}

// proc is one role process slot: one process at a time, started again after
// each death.
type proc struct {
	role   string
	params roleParams
	log    string
	done   chan struct{} // closed when the slot is finished

	mu      sync.Mutex
	cmd     *exec.Cmd
	killing bool
	starts  int
	output  []byte // a producer's stdout, once it finished
	exitErr error  // a producer's last exit status
}

func newFleet(t *testing.T) *fleet {
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("find the test binary to run roles with: %v", err)
	}
	// The logs outlive a failed test (and any test, with
	// POSTBOX_CHAOS_KEEP_LOGS=1), for the post-mortem.
	dir, err := os.MkdirTemp("", "postbox-chaos-logs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("POSTBOX_CHAOS_KEEP_LOGS") != "" {
			t.Logf("role process logs kept in %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return &fleet{t: t, exe: exe, dir: dir}
}

// start adds a slot and runs its process.
func (f *fleet) start(role string, params roleParams) *proc {
	p := &proc{role: role, params: params, log: filepath.Join(f.dir, params.Name+".log"), done: make(chan struct{})}
	f.list = append(f.list, p)
	go f.supervise(p)
	return p
}

func (f *fleet) supervise(p *proc) {
	defer close(p.done)
	env, err := json.Marshal(p.params)
	if err != nil {
		panic(err)
	}
	for {
		cmd := exec.Command(f.exe)
		cmd.Env = append(os.Environ(), roleEnv+"="+p.role, paramsEnv+"="+string(env))
		// Our end of stdin closes when the test process dies, and the role
		// then exits; Pdeathsig covers the rest.
		if _, err := cmd.StdinPipe(); err != nil {
			f.unexpected(p, fmt.Sprintf("stdin pipe: %v", err))
			return
		}
		logf, err := os.OpenFile(p.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			f.unexpected(p, fmt.Sprintf("log file: %v", err))
			return
		}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

		p.mu.Lock()
		if f.stopping.Load() {
			p.mu.Unlock()
			logf.Close()
			return
		}
		err = cmd.Start()
		if err == nil {
			p.cmd = cmd
			p.starts++
		}
		p.mu.Unlock()
		if err != nil {
			logf.Close()
			f.unexpected(p, fmt.Sprintf("start: %v", err))
			return
		}
		err = cmd.Wait()
		logf.Close()
		p.mu.Lock()
		killed := p.killing
		p.cmd, p.killing = nil, false
		if p.role == "producer" {
			p.output, p.exitErr = out.Bytes(), err
		}
		p.mu.Unlock()
		switch {
		case f.stopping.Load():
			return
		case killed:
			// Down for a moment, as a crashed process under a supervisor is.
			time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
		case p.role == "producer" && err == nil:
			return // its work is done
		default:
			f.unexpected(p, fmt.Sprintf("exited by itself (%v); its log ends:\n%s", err, indent(tail(p.log, 20), "    ")))
			if p.role == "producer" {
				return // a producer started again would publish its messages twice
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

func (f *fleet) unexpected(p *proc, what string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.exits = append(f.exits, p.params.Name+": "+what)
}

// kill sends SIGKILL to p's process, if one runs and is not being killed.
func (f *fleet) kill(p *proc) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.killing {
		return false
	}
	p.killing = true
	if err := p.cmd.Process.Kill(); err != nil {
		p.killing = false
		return false
	}
	f.kills.Add(1)
	return true
}

// killable are the relay and consumer slots.
func (f *fleet) killable() []*proc {
	var ps []*proc
	for _, p := range f.list {
		if p.role != "producer" {
			ps = append(ps, p)
		}
	}
	return ps
}

// stop kills every process and waits for every slot to finish.
func (f *fleet) stop() {
	f.stopping.Store(true)
	for _, p := range f.list {
		p.mu.Lock()
		if p.cmd != nil && !p.killing {
			p.killing = true
			_ = p.cmd.Process.Kill()
		}
		p.mu.Unlock()
	}
	for _, p := range f.list {
		<-p.done
	}
}

// unexpectedExits lists the processes that died by themselves.
func (f *fleet) unexpectedExits() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.exits...)
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// countLines counts the lines of the file at path that contain s.
func countLines(path, s string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return strings.Count(string(b), s)
}
