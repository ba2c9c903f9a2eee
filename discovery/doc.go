// Package discovery is sidecar's gossip membership, on hashicorp/memberlist
// (SWIM with Lifeguard): every sidecar, server or client, is a member; each
// announces a Meta with its role and its Raft, HTTP and DNS addresses; and
// each keeps a table of the members it knows with their status, plus a
// stream of changes to it. Raft formation and the leader's reconciliation
// build on Members and Events.
//
// # Life cycle
//
//	g, err := discovery.New(cfg) // listens on cfg.BindAddr; contacts nobody
//	err = g.Start(ctx)           // joins cfg.Join in the background, retrying
//	<-g.Joined()                 // part of a cluster
//	... g.Members(), g.Events(), g.UpdateMeta(ctx, meta) ...
//	err = g.Leave(5 * time.Second) // graceful: the others see "left"
//	err = g.Shutdown()             // stops everything, closes Events
//
// Shutdown without Leave is what a crash looks like: the others declare
// the node "failed" once their probes go unanswered (about 2-3s with
// DefaultConfig in a small cluster).
//
// # Status: alive, failed, left
//
// A member is alive while it answers probes. memberlist declares it dead
// after it missed probes (direct, indirect through other members, and over
// TCP) and a suspicion timeout passed without it refuting; the member is
// then "failed". A member that calls Leave is "left" instead.
//
// memberlist itself tells the two apart: a node that leaves broadcasts a
// "dead" message about itself, and receivers record StateLeft rather than
// StateDead (memberlist state.go, deadNode: "If the dead message was send
// by the node itself, mark it is left"). But memberlist v0.5.4 does not let
// anyone see that state: it lives in the unexported nodeState.State, which
// shadows the exported Node.State, so every *Node handed to an
// EventDelegate (NotifyLeave included) or returned by Members carries
// StateAlive (hashicorp/memberlist#266, #293; open PR #321). Suspicion is
// just as invisible, so this package never reports StatusSuspect today.
//
// This package therefore makes the distinction itself, as Serf does: Leave
// first gossips a leave intent naming the node and a random id of this run
// of it (the "boot" id carried in the meta), waits until it was broadcast,
// and only then calls memberlist's Leave. Receivers re-gossip the intent
// once and include the intents they know in memberlist's periodic
// push/pull syncs. When memberlist reports a member gone, it is "left" if
// an intent for its current run arrived, else "failed". If the intent
// arrives only after the failure was declared (it was lost, or overtaken),
// the member turns from failed to left with a second event, EventLeave.
// The boot id keeps an intent of an earlier run from ever marking a later
// crash as a graceful leave.
//
// Failed and left members stay in Members for Config.ReapAfter, then go
// with an EventReap; a member that comes back before that turns alive
// (EventJoin).
//
// # Events
//
// memberlist reports changes through an EventDelegate, called with its
// node lock held; blocking there would stall probing and gossip. The
// delegate therefore only records the change in the table and appends an
// Event to a queue, which one goroutine forwards to the Events channel, so
// events arrive in the order the table changed. The queue holds up to
// Config.EventQueueSize events; beyond that it is emptied and replaced by
// one EventResync, telling the reader to rebuild its view from Members.
// Nothing else is ever dropped, and memberlist is never blocked.
//
// # Keyring
//
// With a key (Config.EncryptKey, or a Config.KeyringFile that exists) all
// gossip is encrypted and authenticated with AES-GCM by memberlist's
// keyring: every key decrypts, the primary one encrypts. LocalKeyring
// shows it; ListKeys, InstallKey, UseKey and RemoveKey act on every alive
// member through a small request/response on memberlist's user messages
// and report what each member holds (keyring_cluster.go says why gossip,
// and how use and remove are kept from cutting a member off). Every change
// is written to the keyring file first (write, fsync, rename, fsync of the
// directory), so a restart comes back with the keys installed at runtime.
//
// # Metrics
//
//	sidecar_gossip_members{status}        gauge: members by status (alive, suspect, failed, left)
//	sidecar_gossip_events_total{type}     counter: events by type (join, leave, fail, update, reap, resync)
//	sidecar_gossip_events_dropped_total   counter: events dropped for a resync
//	sidecar_gossip_health_score           gauge: memberlist's Lifeguard awareness score (0 is healthy)
//	sidecar_gossip_keys                   gauge: keys in the keyring (0: not encrypted; >1 for long: rotation unfinished)
package discovery
