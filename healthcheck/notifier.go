package healthcheck

import "context"

// Notifier receives the changes of status of the checks, which the agent
// writes to the registry.
//
// UpdateCheck is called from the check's goroutine, only when the check's
// status differs from the one last reported; calls for one check come one at
// a time and in order, calls for different checks may be concurrent. It must
// return when ctx is done (the check was stopped or the Runner closed). An
// error means the registry did not record the status: the Runner retries one
// interval later, unless the status has changed again by then, in which case
// it reports the new one. UpdateCheck must not call Runner.Sync or
// Runner.Close.
type Notifier interface {
	UpdateCheck(ctx context.Context, checkID, status, output string) error
}

// Deregisterer is implemented by a Notifier that deregisters an instance
// when one of its checks has been critical for the check's
// deregister_critical_after without a break. Without it, that field is
// ignored.
//
// DeregisterCritical is called from the check's goroutine, once per critical
// spell; an error makes the Runner try again one interval later. The agent
// is expected to deregister the instance and then call Sync without it. It
// must return when ctx is done and must not call Runner.Sync or
// Runner.Close itself (calling Sync from another goroutine is fine).
type Deregisterer interface {
	DeregisterCritical(ctx context.Context, instanceID string) error
}
