package hangwatch

import (
	"bytes"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// A test blocked on a channel is named, with the line it waits on, in the
// report's last lines; goroutines that run no test are left out.
func TestReport_namesTheBlockedTestLast(t *testing.T) {
	release := make(chan struct{})
	idle := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go notATest(&wg, idle)
	defer func() { close(idle); wg.Wait() }()

	reported := make(chan string, 1)
	t.Run("waiting", func(t *testing.T) {
		go func() {
			// The subtest's goroutine reaches its receive, then is reported.
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				if bytes.Contains(stacks(), []byte("hangwatch.blockHere(")) {
					break
				}
				time.Sleep(time.Millisecond)
			}
			var out bytes.Buffer
			Report(&out, stacks(), time.Minute)
			reported <- out.String()
			close(release)
		}()
		blockHere(release)
	})
	out := <-reported
	// The last three lines: the header, then the two tests (in the dump's
	// order): the subtest where it blocks, the parent at its t.Run call,
	// not in package testing.
	lines := strings.Split(strings.TrimSpace(out), "\n")
	tail := lines[len(lines)-3:]
	if !strings.Contains(tail[0], "still running after 1m0s") {
		t.Fatalf("summary header missing:\n%s", out)
	}
	summary := strings.Join(tail[1:], "\n")
	const pkg = "github.com/sidecarhq/sidecar/internal/hangwatch."
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`TestReport_namesTheBlockedTestLast\.func\d+ blocked in ` + regexp.QuoteMeta(pkg+"blockHere(")),
		regexp.MustCompile(`TestReport_namesTheBlockedTestLast blocked in ` + regexp.QuoteMeta(pkg+"TestReport_namesTheBlockedTestLast(")),
	} {
		if !want.MatchString(summary) {
			t.Fatalf("summary lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "notATest") {
		t.Fatalf("a goroutine that runs no test was reported:\n%s", out)
	}
}

// A dump without a test goroutine says so instead of printing nothing.
func TestReport_noTestGoroutine(t *testing.T) {
	dump := []byte("goroutine 1 [chan receive]:\nmain.main()\n\t/x/main.go:3 +0x1\n")
	var out bytes.Buffer
	Report(&out, dump, time.Second)
	if !strings.Contains(out.String(), "no goroutine is in a test function") {
		t.Fatalf("report: %s", out.String())
	}
}

// A hang in a cleanup (no test function runs any more) or in TestMain
// names the goroutine that hangs and where it waits, and prints the other
// goroutines of the code under test, which it is likely waiting for;
// goroutines of the standard library alone, and the watchdog's own, are
// left out.
func TestReport_hangInACleanup(t *testing.T) {
	dump := []byte(`goroutine 9 [chan receive]:
github.com/x/raft.(*Raft).Shutdown(0xc0)
	/m/raft/api.go:10 +0x1
github.com/x/y_test.cluster.func1()
	/x/y_test.go:20 +0x1
testing.(*common).Cleanup.func1()
	/go/src/testing/testing.go:1 +0x1
testing.(*common).runCleanup(0xc0, 0x0)
	/go/src/testing/testing.go:2 +0x1
testing.tRunner.func2()
	/go/src/testing/testing.go:3 +0x1
testing.tRunner(0xc0, 0xc1)
	/go/src/testing/testing.go:4 +0x1
created by testing.(*T).Run in goroutine 1
	/go/src/testing/testing.go:5 +0x1

goroutine 12 [select]:
github.com/x/raft.(*Raft).runFSM(0xc0)
	/m/raft/fsm.go:30 +0x1
created by github.com/x/raft.NewRaft in goroutine 9
	/m/raft/api.go:5 +0x1

goroutine 1 [semacquire]:
go.uber.org/goleak.VerifyTestMain({0x0, 0x0})
	/m/goleak/testmain.go:1 +0x1
github.com/x/y_test.TestMain(0xc0)
	/x/main_test.go:3 +0x1
main.main()
	_testmain.go:9 +0x1

goroutine 20 [running]:
github.com/sidecarhq/sidecar/internal/hangwatch.stacks()
	/x/internal/hangwatch/hangwatch.go:1 +0x1
github.com/sidecarhq/sidecar/internal/hangwatch.Start.func1()
	/x/internal/hangwatch/hangwatch.go:2 +0x1

goroutine 13 [IO wait]:
internal/poll.runtime_pollWait(0x0, 0x72)
	/go/src/runtime/netpoll.go:1 +0x1
net/http.(*persistConn).readLoop(0xc0)
	/go/src/net/http/transport.go:1 +0x1
created by net/http.(*Transport).dialConn in goroutine 1
	/go/src/net/http/transport.go:2 +0x1
`)
	var out bytes.Buffer
	Report(&out, dump, time.Second)
	got := out.String()
	lines := strings.Split(strings.TrimSpace(got), "\n")
	last := strings.Join(lines[len(lines)-2:], "\n")
	if !strings.Contains(last, "goroutine 9 (no test function: a cleanup or TestMain) blocked in github.com/x/raft.(*Raft).Shutdown(0xc0)") {
		t.Fatalf("the last lines do not name the cleanup's goroutine:\n%s", got)
	}
	if !strings.Contains(got, "runFSM") {
		t.Fatalf("the code under test's other goroutine is missing:\n%s", got)
	}
	if strings.Contains(got, "readLoop") {
		t.Fatalf("a standard-library goroutine was printed:\n%s", got)
	}
	if !strings.Contains(last, "goroutine 1 (no test function: a cleanup or TestMain) blocked in go.uber.org/goleak.VerifyTestMain(") {
		t.Fatalf("the main goroutine, in TestMain, is not named:\n%s", got)
	}
	if strings.Contains(got, "Start.func1") {
		t.Fatalf("the watchdog's own goroutine was printed:\n%s", got)
	}
	if strings.Count(got, "hangwatch:   ") != 2 {
		t.Fatalf("want two summary lines, the cleanup's and TestMain's:\n%s", got)
	}
}

func blockHere(release chan struct{}) { <-release }

func notATest(wg *sync.WaitGroup, idle chan struct{}) {
	defer wg.Done()
	<-idle
}

func TestIsStd(t *testing.T) {
	for fn, want := range map[string]bool{
		"time.Sleep":                      true,
		"net/http.(*Client).Do":           true,
		"testing.(*T).Run":                true,
		"github.com/x/y.F":                false,
		"github.com/x/y_test.TestA.func1": false,
		"go.etcd.io/bbolt.(*DB).Update":   false,
		"internal/poll.(*FD).Read":        true,
	} {
		if got := isStd(fn); got != want {
			t.Errorf("isStd(%q) = %v, want %v", fn, got, want)
		}
	}
}

// A parallel test still waiting for its turn is counted, not listed.
func TestReport_countsPausedTests(t *testing.T) {
	dump := []byte(`goroutine 7 [chan receive]:
testing.(*T).Parallel(0xc001df58c8)
	/usr/local/go/src/testing/testing.go:1800 +0x1
example.com/p_test.TestA(0xc001df58c8)
	/x/a_test.go:10 +0x1
testing.tRunner(0xc001df58c8, 0x1)
	/usr/local/go/src/testing/testing.go:2036 +0x21d
created by testing.(*T).Run in goroutine 1
	/usr/local/go/src/testing/testing.go:2101 +0xb13

goroutine 8 [sleep]:
time.Sleep(0x1e8480)
	/usr/local/go/src/runtime/time.go:363 +0x165
example.com/p_test.TestB(0xc001df5688)
	/x/b_test.go:20 +0x1
testing.tRunner(0xc001df5688, 0x1)
	/usr/local/go/src/testing/testing.go:2036 +0x21d
created by testing.(*T).Run in goroutine 1
	/usr/local/go/src/testing/testing.go:2101 +0xb13
`)
	var out bytes.Buffer
	Report(&out, dump, time.Second)
	s := out.String()
	if !strings.Contains(s, "1 more wait in t.Parallel") || strings.Contains(s, "TestA blocked") {
		t.Fatalf("the paused test is not only counted:\n%s", s)
	}
	if !strings.Contains(s, "TestB blocked in example.com/p_test.TestB(0xc001df5688) /x/b_test.go:20") {
		t.Fatalf("the sleeping test is not named at its own line:\n%s", s)
	}
}
