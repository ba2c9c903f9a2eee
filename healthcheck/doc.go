// Package healthcheck runs the health checks of the service instances a
// sidecar owns, next to their service, and reports each change of a check's
// status through a Notifier, which the agent turns into a Raft write.
//
// # Check types
//
//	http  GET the URL: 2xx passing, 429 warning, anything else, a transport
//	      error or the timeout critical. Output: "HTTP GET <url>: <status
//	      line> Output: <body>", truncated. At most 5 redirects are followed.
//	tcp   connect to host:port within the timeout: passing, else critical.
//	exec  run argv, without a shell, in its own process group: exit 0
//	      passing, 1 warning, anything else critical. At the timeout, and
//	      after the command exits, the whole process group is killed, so no
//	      child outlives a run. Output: the last bytes of stdout and stderr.
//	ttl   critical unless Runner.TTLUpdate reports within the TTL; each update
//	      sets the status it carries and restarts the TTL.
//
// # Statuses, thresholds and notifications
//
// A check starts in the status the registry holds for it (Check.Status;
// critical when empty, which is what the registry gives a new instance) and
// assumes the registry holds it, so it reports nothing until its status
// differs.
//
// Each run of an http, tcp or exec check yields a result. A passing result
// is a success; a warning or critical result is a failure, because only
// passing instances are served (DNS, ?passing). Then:
//
//   - after success_before_passing consecutive successes (default 1) the
//     check turns passing;
//   - after failures_before_critical consecutive failures (default 1) the
//     check takes the status of the latest failure, warning or critical;
//   - otherwise the status stays as it was.
//
// So warning is reported like critical, once the failure threshold allows,
// and a check already failing moves between warning and critical with each
// result. A new instance stays critical until success_before_passing passes
// in a row. TTL checks ignore the thresholds: the application states its
// status itself.
//
// The Notifier is called only when the status differs from the one last
// reported (or the one Sync says the registry holds): never for an unchanged
// status, and output changes alone are not reported. A failed notification is
// retried one interval later.
//
// A check critical for deregister_critical_after without a break makes the
// Runner call Deregisterer.DeregisterCritical with its instance, once per
// critical spell, when the Notifier also implements Deregisterer.
//
// # Scheduling
//
// Each check has one goroutine and one timer. Its first run comes after a
// random delay in [0, interval) (Config.InitialDelay), so that checks
// registered together do not fire together; then it runs every interval
// on a fixed schedule (a run that overran its interval is followed by the
// next at once). Runs of checks with an interval of 1s or more are rounded up
// to a 25ms grid, so that the runs close together share one wake-up of the
// process: this cuts the sidecar's CPU by about two thirds with hundreds of
// checks, for at most 25ms of delay. A check without a timeout
// gets Config.Timeout, capped at its interval. HTTP checks share one
// transport, whose idle connections Close releases.
package healthcheck
