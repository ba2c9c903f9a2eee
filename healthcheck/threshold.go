package healthcheck

import "github.com/sidecarhq/sidecar/fsm"

// thresholds turns the results of a check's runs into its status, as the
// package documentation describes: successBeforePassing consecutive passing
// results make it passing, failuresBeforeCritical consecutive warning or
// critical results give it the status of the latest.
type thresholds struct {
	successBeforePassing   int
	failuresBeforeCritical int
	successes, failures    int
}

func newThresholds(successBeforePassing, failuresBeforeCritical int) thresholds {
	return thresholds{
		successBeforePassing:   max(successBeforePassing, 1),
		failuresBeforeCritical: max(failuresBeforeCritical, 1),
	}
}

// observe counts one result and returns the status that follows from cur.
func (t *thresholds) observe(cur, result string) string {
	if result == fsm.StatusPassing {
		t.failures = 0
		// Counters saturate at their threshold: past it, more of the
		// same changes nothing.
		if t.successes < t.successBeforePassing {
			t.successes++
		}
		if t.successes >= t.successBeforePassing {
			return fsm.StatusPassing
		}
		return cur
	}
	t.successes = 0
	if t.failures < t.failuresBeforeCritical {
		t.failures++
	}
	if t.failures >= t.failuresBeforeCritical {
		return result
	}
	return cur
}
