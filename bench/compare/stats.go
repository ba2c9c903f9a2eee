package main

import (
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// quantile returns the q-quantile (nearest rank) of xs; NaN when empty.
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	if i < 0 {
		i = 0
	}
	return s[i]
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func maxOf(xs []float64) float64 {
	m := math.NaN()
	for _, x := range xs {
		if math.IsNaN(m) || x > m {
			m = x
		}
	}
	return m
}

func seconds(d time.Duration) float64 { return d.Seconds() }

// unit says how a row's values print and which way is better.
type unit int

const (
	unitSeconds unit = iota // lower is better
	unitRate                // operations per second, higher is better
	unitBytes               // lower is better
)

// row is one line of the table. A NaN value is a measurement that did not
// happen (a system without that feature, or a failed section).
type row struct {
	sec     string // the BENCH_SECTIONS section that fills it
	what    string
	unit    unit
	sidecar float64
	etcd    float64
	goal    string
	// met judges the goal; nil when the row has none.
	met  func(sc, etcd float64) bool
	note string // shown after the value, e.g. trial counts
}

func fmtValue(u unit, v float64) string {
	if math.IsNaN(v) {
		return "—"
	}
	switch u {
	case unitSeconds:
		switch {
		case v < 0.01:
			return fmt.Sprintf("%.2f ms", v*1000)
		case v < 1:
			return fmt.Sprintf("%.0f ms", v*1000)
		default:
			return fmt.Sprintf("%.2f s", v)
		}
	case unitRate:
		return fmt.Sprintf("%.0f/s", v)
	case unitBytes:
		return fmt.Sprintf("%.1f MB", v/1e6)
	}
	return fmt.Sprint(v)
}

func fmtRatio(sc, etcd float64) string {
	if math.IsNaN(sc) || math.IsNaN(etcd) || etcd == 0 {
		return "—"
	}
	r := sc / etcd
	switch {
	case r < 0.01:
		return fmt.Sprintf("%.4f", r)
	case r < 10:
		return fmt.Sprintf("%.2f", r)
	default:
		return fmt.Sprintf("%.0f", r)
	}
}

// markdown renders the rows as one Markdown table whose value columns are
// named a and b (the ratio is a/b).
func markdown(rows []*row, colA, colB string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "| what | %s | %s | %s/%s | goal | met |\n", colA, colB, colA, colB)
	b.WriteString("|---|---:|---:|---:|---|:-:|\n")
	for _, r := range rows {
		met := ""
		if r.met != nil {
			switch {
			case math.IsNaN(r.sidecar):
				met = "?"
			case r.met(r.sidecar, r.etcd):
				met = "yes"
			default:
				met = "**no**"
			}
		}
		sc := fmtValue(r.unit, r.sidecar)
		if r.note != "" {
			sc += " " + r.note
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n",
			r.what, sc, fmtValue(r.unit, r.etcd), fmtRatio(r.sidecar, r.etcd), r.goal, met)
	}
	return b.String()
}

// Goal judges.
func below(limit float64) func(sc, _ float64) bool {
	return func(sc, _ float64) bool { return sc < limit }
}

func ratioAtMost(r float64) func(sc, etcd float64) bool {
	return func(sc, etcd float64) bool { return !math.IsNaN(etcd) && sc <= r*etcd }
}

func ratioAtLeast(r float64) func(sc, etcd float64) bool {
	return func(sc, etcd float64) bool { return !math.IsNaN(etcd) && sc >= r*etcd }
}
