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
	if len(summary) == 0 {
		summary = reportOutsideTests(w, dump)
	}
	fmt.Fprintf(w, "hangwatch: still running after %v (the stacks of their goroutines are above; %d more wait in t.Parallel):\n", after, paused)
	fmt.Fprintln(w, strings.Join(summary, "\n"))
}

// reportOutsideTests covers a hang where no test function runs: in a
// cleanup (t.Cleanup, run by testing.tRunner after the test returned) or in
// TestMain. It writes every goroutine with a frame outside the standard
// library (what a cleanup waits for is usually one of them, a server's
// loop say) and returns a line for each that the test runner itself
// runs, naming where it is blocked.
func reportOutsideTests(w io.Writer, dump []byte) []string {
	var summary []string
	for _, g := range bytes.Split(dump, []byte("\n\n")) {
		id, frames := goroutineFrames(string(g))
		at := ""
		runner, self := false, false
		for _, f := range frames {
			fn := funcName(f)
			if at == "" && !isStd(fn) {
				at = f
			}
			switch {
			case fn == "testing.tRunner", fn == "testing.(*M).Run", fn == "main.main":
				runner = true // a test's cleanup, or the main goroutine: TestMain
			case strings.HasSuffix(fn, "/internal/hangwatch.stacks"):
				self = true // the watchdog taking this dump
			}
		}
		if at == "" || self {
			continue
		}
		fmt.Fprintf(w, "%s\n\n", g)
		if runner {
			summary = append(summary, fmt.Sprintf("hangwatch:   %s (no test function: a cleanup or TestMain) blocked in %s", id, at))
		}
	}
	if len(summary) == 0 {
		summary = append(summary, "hangwatch:   no goroutine is in a test function, a cleanup or TestMain")
	}
	return summary
}

// goroutineFrames splits one goroutine of a dump into its header's
// "goroutine N" and its frames (each a function line and its file line).
func goroutineFrames(g string) (id string, frames []string) {
	lines := strings.Split(strings.TrimSpace(g), "\n")
	if len(lines) < 3 || !strings.HasPrefix(lines[0], "goroutine ") {
		return "", nil
	}
	id = lines[0]
	if i := strings.Index(id, " ["); i > 0 {
		id = id[:i]
	}
	for i := 1; i+1 < len(lines); i += 2 {
		frames = append(frames, strings.TrimSpace(lines[i])+" "+strings.TrimSpace(lines[i+1]))
	}
	return id, frames
}

// testGoroutine reports whether a goroutine's stack runs a test (a frame
// whose function is Test*, called by testing.tRunner), naming the test and
// the innermost frame outside the standard library; waiting: the test has
// not started, its first frame outside the runtime is t.Parallel.
func testGoroutine(g string) (test, at string, waiting, ok bool) {
	_, frames := goroutineFrames(g)
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
