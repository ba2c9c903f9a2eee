// Package hangwatch names the tests of a hung test binary in the last lines
// it prints. When go test's -timeout fires, its panic names the running
// tests at the top of a goroutine dump that can run to thousands of lines,
// and CI logs that keep only a head and a tail lose them. A watchdog fires
// shortly before that timeout instead, prints the stacks of the goroutines
// running tests, then one line per test with where it is blocked, and exits.
package hangwatch

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"
)

// margin is how long before go test's own timeout the watchdog fires.
const margin = 20 * time.Second

// Start arms the watchdog for a TestMain. It parses the test flags (as a
// TestMain that reads them must) and does nothing unless -test.timeout is
// over twice margin. The returned func disarms it.
func Start() (stop func()) {
	if !flag.Parsed() {
		flag.Parse()
	}
	timeout := testTimeout()
	if timeout <= 2*margin {
		return func() {}
	}
	t := time.AfterFunc(timeout-margin, func() {
		Report(os.Stderr, stacks(), timeout-margin)
		os.Exit(2)
	})
	return func() { t.Stop() }
}

func testTimeout() time.Duration {
	f := flag.Lookup("test.timeout")
	if f == nil {
		return 0
	}
	g, ok := f.Value.(flag.Getter)
	if !ok {
		return 0
	}
	d, _ := g.Get().(time.Duration)
	return d
}

func stacks() []byte {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return buf[:n]
		}
		buf = make([]byte, 2*len(buf))
	}
}

// Report writes the goroutines of dump (runtime.Stack's text for all
// goroutines) that run a test, and then, last, one line per such test.
func Report(w io.Writer, dump []byte, after time.Duration) {
	var summary []string
	paused := 0
	for _, g := range bytes.Split(dump, []byte("\n\n")) {
		test, at, waiting, ok := testGoroutine(string(g))
		if !ok {
			continue
		}
		if waiting {
			paused++ // not started: a parallel test waits its turn
			continue
		}
		fmt.Fprintf(w, "%s\n\n", g)
		summary = append(summary, fmt.Sprintf("hangwatch:   %s blocked in %s", test, at))
	}
	fmt.Fprintf(w, "hangwatch: still running after %v (the stacks of their goroutines are above; %d more wait in t.Parallel):\n", after, paused)
	if len(summary) == 0 {
		summary = append(summary, "hangwatch:   no goroutine is in a test function (a hang in TestMain or in cleanup)")
	}
	fmt.Fprintln(w, strings.Join(summary, "\n"))
}

// testGoroutine reports whether a goroutine's stack runs a test (a frame
// whose function is Test*, called by testing.tRunner), naming the test and
// the innermost frame outside the standard library; waiting: the test has
// not started, its first frame outside the runtime is t.Parallel.
func testGoroutine(g string) (test, at string, waiting, ok bool) {
	lines := strings.Split(strings.TrimSpace(g), "\n")
	if len(lines) < 3 || !strings.HasPrefix(lines[0], "goroutine ") {
		return "", "", false, false
	}
	var frames []string // function lines; the file line follows each
	for i := 1; i+1 < len(lines); i += 2 {
		frames = append(frames, strings.TrimSpace(lines[i])+" "+strings.TrimSpace(lines[i+1]))
	}
	for i, f := range frames {
		if !strings.HasPrefix(f, "testing.tRunner(") || i == 0 {
			continue
		}
		// "example.com/pkg_test.TestX.func1" (a subtest) is "TestX.func1".
		name := funcName(frames[i-1])
		name = name[strings.LastIndex(name, "/")+1:]
		if j := strings.Index(name, "."); j >= 0 {
			name = name[j+1:]
		}
		if !strings.HasPrefix(name, "Test") {
			return "", "", false, false
		}
		at = frames[0]
		for _, f := range frames[:i] {
			if !isStd(funcName(f)) {
				at = f
				break
			}
		}
		for _, f := range frames[:i] {
			if !strings.HasPrefix(f, "runtime.") {
				waiting = strings.HasPrefix(f, "testing.(*T).Parallel(")
				break
			}
		}
		return name, at, waiting, true
	}
	return "", "", false, false
}

// funcName is the function of a frame line, without its arguments.
func funcName(frame string) string {
	if i := strings.Index(frame, "("); i > 0 {
		// A method's receiver is in parentheses too: "pkg.(*T).M(...)".
		if strings.HasPrefix(frame[i:], "(*") {
			if j := strings.Index(frame[i:], ")."); j > 0 {
				rest := frame[i+j+2:]
				if k := strings.Index(rest, "("); k >= 0 {
					return frame[:i+j+2] + rest[:k]
				}
			}
		}
		return frame[:i]
	}
	return frame
}

// isStd reports whether a function is the standard library's: its import
// path's first element has no dot ("time.Sleep", "net/http.(*Client).Do").
func isStd(fn string) bool {
	first, _, nested := strings.Cut(fn, "/")
	return !nested || !strings.Contains(first, ".")
}
