// Command mutate summarises gremlins' results (its -o JSON files) per
// package: one table of killed, lived, equivalent and uncovered mutants,
// efficacy and mutant coverage, the mutants that lived unexplained, and a
// non-zero exit when a package is below its thresholds (gremlins v0.6.0
// ignores its own threshold flags).
//
// A mutant that lives because the change cannot be observed (a
// short-circuit that only saves work, a timing constant whose exact value
// no test may assert) is marked at its line, or on the line above, with a
// comment "equivalent mutant: <why>" (above: in the comment lines right
// above it); it then counts as equivalent, not as lived.
//
//	go run ./scripts/mutate -efficacy fsm=95,election=85 -coverage 90 fsm=/tmp/fsm.json election=/tmp/election.json
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// The marker of an equivalent mutant.
const marker = "equivalent mutant:"

type result struct {
	Files []struct {
		Name      string     `json:"file_name"`
		Mutations []mutation `json:"mutations"`
	} `json:"files"`
}

type mutation struct {
	Type   string `json:"type"`
	Status string `json:"status"`
	Line   int    `json:"line"`
	Column int    `json:"column"`
}

type summary struct {
	pkg                                          string
	killed, lived, equivalent, notCovered        int
	unexplained                                  []string
	efficacy, coverage, minEfficacy, minCoverage float64
}

func main() {
	effFlag := flag.String("efficacy", "", "minimum efficacy per package, pkg=percent,...")
	covFlag := flag.Float64("coverage", 0, "minimum mutant coverage of every package, percent")
	flag.Parse()
	mins, err := parseMins(*effFlag)
	if err != nil {
		fail(err)
	}
	var sums []summary
	for _, arg := range flag.Args() {
		pkg, file, ok := strings.Cut(arg, "=")
		if !ok {
			fail(fmt.Errorf("argument %q: want package-dir=results.json", arg))
		}
		s, err := summarise(pkg, file, lineReader(pkg))
		if err != nil {
			fail(err)
		}
		s.minEfficacy, s.minCoverage = mins[pkg], *covFlag
		sums = append(sums, s)
	}
	if !report(os.Stdout, sums) {
		os.Exit(1)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "mutate:", err)
	os.Exit(2)
}

func parseMins(s string) (map[string]float64, error) {
	out := map[string]float64{}
	if s == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		f, err := strconv.ParseFloat(v, 64)
		if !ok || err != nil {
			return nil, fmt.Errorf("-efficacy %q: want pkg=percent", kv)
		}
		out[k] = f
	}
	return out, nil
}

// lineReader returns a source line of a file of the package dir (gremlins
// names files relative to the path it was given, or to the module).
func lineReader(pkg string) func(file string, line int) string {
	cache := map[string][]string{}
	return func(file string, line int) string {
		lines, ok := cache[file]
		if !ok {
			for _, p := range []string{filepath.Join(pkg, file), file} {
				if data, err := os.ReadFile(p); err == nil {
					lines = strings.Split(string(data), "\n")
					break
				}
			}
			cache[file] = lines
		}
		if line < 1 || line > len(lines) {
			return ""
		}
		return lines[line-1]
	}
}

// summarise counts one package's mutants; line reads its source.
func summarise(pkg, file string, line func(string, int) string) (summary, error) {
	s := summary{pkg: pkg}
	data, err := os.ReadFile(file)
	if err != nil {
		return s, err
	}
	var r result
	if err := json.Unmarshal(data, &r); err != nil {
		return s, fmt.Errorf("%s: %w", file, err)
	}
	for _, f := range r.Files {
		for _, m := range f.Mutations {
			switch m.Status {
			case "KILLED", "TIMED OUT":
				s.killed++
			case "NOT COVERED":
				s.notCovered++
			case "LIVED":
				if marked(f.Name, m.Line, line) {
					s.equivalent++
					continue
				}
				s.lived++
				s.unexplained = append(s.unexplained, fmt.Sprintf("%s:%d:%d %s", f.Name, m.Line, m.Column, m.Type))
			}
		}
	}
	sort.Strings(s.unexplained)
	if n := s.killed + s.lived; n > 0 {
		s.efficacy = 100 * float64(s.killed) / float64(n)
	}
	if n := s.killed + s.lived + s.equivalent + s.notCovered; n > 0 {
		s.coverage = 100 * float64(s.killed+s.lived+s.equivalent) / float64(n)
	}
	return s, nil
}

// marked reports whether the line holds the marker, or the comment lines
// right above it do.
func marked(file string, n int, line func(string, int) string) bool {
	if strings.Contains(line(file, n), marker) {
		return true
	}
	for i := n - 1; i > 0; i-- {
		l := strings.TrimSpace(line(file, i))
		if !strings.HasPrefix(l, "//") {
			return false
		}
		if strings.Contains(l, marker) {
			return true
		}
	}
	return false
}

// report prints the table and the unexplained survivors; it returns false
// when a package is below a threshold.
func report(w io.Writer, sums []summary) bool {
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	fmt.Fprintln(bw, "| package | killed | lived | equivalent | not covered | efficacy | mutant coverage | thresholds |")
	fmt.Fprintln(bw, "|---|---:|---:|---:|---:|---:|---:|---|")
	ok := true
	for _, s := range sums {
		verdict := "met"
		if s.efficacy < s.minEfficacy || s.coverage < s.minCoverage {
			verdict, ok = "**missed**", false
		}
		fmt.Fprintf(bw, "| %s | %d | %d | %d | %d | %.1f%% | %.1f%% | ≥ %.0f%% / ≥ %.0f%%: %s |\n",
			s.pkg, s.killed, s.lived, s.equivalent, s.notCovered, s.efficacy, s.coverage, s.minEfficacy, s.minCoverage, verdict)
	}
	for _, s := range sums {
		if len(s.unexplained) == 0 {
			continue
		}
		fmt.Fprintf(bw, "\n%s: %d mutants lived, neither killed nor marked %q:\n", s.pkg, len(s.unexplained), marker)
		for _, u := range s.unexplained {
			fmt.Fprintf(bw, "  %s/%s\n", s.pkg, u)
		}
	}
	return ok
}
