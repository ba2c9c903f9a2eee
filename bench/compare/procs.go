package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// supervisor starts every process of a run and stops each of them by its
// PID. Every child gets Pdeathsig=SIGKILL, so none outlives the driver even
// if the driver itself is killed.
type supervisor struct {
	dir string // logs and working directory of the children

	mu    sync.Mutex
	live  map[int]*proc
	ports map[int]bool
	n     int
}

func newSupervisor(dir string) (*supervisor, error) {
	for _, d := range []string{"logs", "work"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	return &supervisor{dir: dir, live: map[int]*proc{}, ports: map[int]bool{}}, nil
}

// proc is one started process. Its combined output goes to a log file and
// through a line watcher (see seen).
type proc struct {
	name string
	args []string
	cmd  *exec.Cmd
	done chan struct{}

	mu      sync.Mutex
	lines   []string // the first maxLines lines of output
	waiters []lineWaiter
}

type lineWaiter struct {
	substr string
	ch     chan string
}

const maxLines = 200

// start runs bin with args; name labels its log file (appended to when a
// process of that name is started again).
func (s *supervisor) start(name, bin string, args ...string) (*proc, error) {
	return s.startEnv(name, nil, bin, args...)
}

// startEnv is start with extra environment variables ("K=V").
func (s *supervisor) startEnv(name string, env []string, bin string, args ...string) (*proc, error) {
	logf, err := os.OpenFile(filepath.Join(s.dir, "logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		logf.Close()
		return nil, err
	}
	p := &proc{name: name, args: args, done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Dir = filepath.Join(s.dir, "work")
	if env != nil {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	fmt.Fprintf(logf, "=== %s %s %s\n", time.Now().Format(time.RFC3339Nano), bin, strings.Join(args, " "))
	if err := p.cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	pw.Close()
	s.mu.Lock()
	s.live[p.cmd.Process.Pid] = p
	s.mu.Unlock()
	go func() {
		p.copyLines(pr, logf)
		pr.Close()
		logf.Close()
	}()
	go func() {
		_ = p.cmd.Wait()
		s.mu.Lock()
		delete(s.live, p.cmd.Process.Pid)
		s.mu.Unlock()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) copyLines(r io.Reader, w io.Writer) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(w, line)
		p.mu.Lock()
		if len(p.lines) < maxLines {
			p.lines = append(p.lines, line)
		}
		kept := p.waiters[:0]
		for _, lw := range p.waiters {
			if strings.Contains(line, lw.substr) {
				lw.ch <- line
			} else {
				kept = append(kept, lw)
			}
		}
		p.waiters = kept
		p.mu.Unlock()
	}
	// The pipe may stay open after the child exits when a grandchild
	// inherited it; the reader then ends with the last writer.
}

// seen returns a channel that receives the first output line containing
// substr (one already printed counts).
func (p *proc) seen(substr string) <-chan string {
	ch := make(chan string, 1)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, l := range p.lines {
		if strings.Contains(l, substr) {
			ch <- l
			return ch
		}
	}
	p.waiters = append(p.waiters, lineWaiter{substr, ch})
	return ch
}

// waitLine waits for a line containing substr, the process's exit, or the
// timeout.
func (p *proc) waitLine(substr string, timeout time.Duration) (string, error) {
	select {
	case l := <-p.seen(substr):
		return l, nil
	case <-p.done:
		select {
		case l := <-p.seen(substr):
			return l, nil
		default:
		}
		return "", fmt.Errorf("%s exited before printing %q: %s", p.name, substr, p.tail())
	case <-time.After(timeout):
		return "", fmt.Errorf("%s did not print %q within %v: %s", p.name, substr, timeout, p.tail())
	}
}

func (p *proc) tail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.lines
	if len(l) > 5 {
		l = l[len(l)-5:]
	}
	return strings.Join(l, " | ")
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal sends SIGKILL (or sig) to the process by its PID, without waiting.
func (p *proc) signal(sig syscall.Signal) {
	if !p.exited() {
		_ = syscall.Kill(p.pid(), sig)
	}
}

// kill9 sends SIGKILL and waits until the process is reaped.
func (p *proc) kill9() {
	p.signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM, waits up to grace, then SIGKILL.
func (p *proc) stop(grace time.Duration) {
	p.signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.kill9()
	}
}

// stopAll stops every live process by PID, all at once, each with grace.
func (s *supervisor) stopAll(grace time.Duration) {
	s.mu.Lock()
	var ps []*proc
	for _, p := range s.live {
		ps = append(ps, p)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() { defer wg.Done(); p.stop(grace) }()
	}
	wg.Wait()
}

// port returns a loopback port free for TCP and UDP right now, never one
// handed out before in this run.
func (s *supervisor) port() (int, error) {
	for i := 0; i < 100; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port))
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		s.mu.Lock()
		used := s.ports[port]
		s.ports[port] = true
		s.mu.Unlock()
		if !used {
			return port, nil
		}
	}
	return 0, fmt.Errorf("no free loopback port")
}

func (s *supervisor) addr() (string, error) {
	p, err := s.port()
	if err != nil {
		return "", err
	}
	return "127.0.0.1:" + strconv.Itoa(p), nil
}

// rssBytes reads VmRSS from /proc/<pid>/status.
func rssBytes(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, err := strconv.ParseFloat(f[1], 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}
