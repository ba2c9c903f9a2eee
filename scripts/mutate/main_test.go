package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A lived mutant on a line marked equivalent (or below such a line) is not
// counted against efficacy; any other is listed, and a package below its
// threshold fails the report.
func TestSummarise(t *testing.T) {
	dir := t.TempDir()
	src := "package x\n" +
		"// equivalent mutant: only saves work,\n" +
		"// said on two lines\n" +
		"if a < b {}\n" +
		"if c < d {} // equivalent mutant: a timing constant\n" +
		"if e < f {}\n"
	if err := os.WriteFile(filepath.Join(dir, "x.go"), []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	res := `{"files":[{"file_name":"x.go","mutations":[
		{"line":4,"column":6,"type":"CONDITIONALS_BOUNDARY","status":"LIVED"},
		{"line":5,"column":6,"type":"CONDITIONALS_BOUNDARY","status":"LIVED"},
		{"line":6,"column":6,"type":"CONDITIONALS_BOUNDARY","status":"LIVED"},
		{"line":6,"column":6,"type":"CONDITIONALS_NEGATION","status":"KILLED"},
		{"line":6,"column":6,"type":"ARITHMETIC_BASE","status":"TIMED OUT"},
		{"line":6,"column":6,"type":"INVERT_NEGATIVES","status":"NOT VIABLE"},
		{"line":4,"column":6,"type":"CONDITIONALS_NEGATION","status":"NOT COVERED"}]}]}`
	file := filepath.Join(dir, "r.json")
	if err := os.WriteFile(file, []byte(res), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := summarise(dir, file, lineReader(dir))
	if err != nil {
		t.Fatal(err)
	}
	if s.killed != 2 || s.lived != 1 || s.equivalent != 2 || s.notCovered != 1 {
		t.Fatalf("killed %d lived %d equivalent %d not covered %d; want 2 1 2 1", s.killed, s.lived, s.equivalent, s.notCovered)
	}
	if len(s.unexplained) != 1 || !strings.HasPrefix(s.unexplained[0], "x.go:6:6 ") {
		t.Fatalf("unexplained %v", s.unexplained)
	}
	// 2 killed of 3 that count; 5 of 6 mutants covered.
	if s.efficacy < 66.6 || s.efficacy > 66.7 || s.coverage < 83.3 || s.coverage > 83.4 {
		t.Fatalf("efficacy %.2f coverage %.2f", s.efficacy, s.coverage)
	}
	var out strings.Builder
	s.minEfficacy, s.minCoverage = 95, 90
	if report(&out, []summary{s}) || !strings.Contains(out.String(), "**missed**") || !strings.Contains(out.String(), "x.go:6:6") {
		t.Fatalf("a package below its thresholds passed:\n%s", out.String())
	}
	s.minEfficacy, s.minCoverage = 60, 80
	if !report(&out, []summary{s}) {
		t.Fatal("a package above its thresholds failed")
	}
}
