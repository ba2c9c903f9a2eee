// Package concurrency gives applications locks and leader elections on top
// of their local sidecar, in the spirit of etcd's client/v3/concurrency but
// with sidecar's guarantees, through nothing but the HTTP API (api.Client).
//
// A Session owns a lease and keeps it alive. Its Done channel closes the
// moment the application can no longer be sure the lease is live: from the
// send time of the last acknowledged keepalive plus the TTL, less a safety
// margin (see SafetyMargin), which is strictly before the servers can expire
// the lease and hand what it held to someone else (SPEC "Self-demotion").
//
// A Mutex and an Election hold on a session's lease. What they hand back,
// a held Mutex or a Leadership, carries the acquisition's fencing token
// (SPEC "Fencing tokens": strictly greater than every token handed out
// before for that name) and a Done channel closed when the hold can no
// longer be trusted: the session's Done, or the registry showing someone
// else. Stop acting when Done closes.
//
// Done is the holder's view. A resource that others write too, and that
// cannot remember the highest token it has seen (a plain file, a mail
// gateway), asks Fence before each action instead: the servers answer,
// with a quorum, whether the token is still the live holder's.
//
// Every call that can block takes a context and honours it.
package concurrency
