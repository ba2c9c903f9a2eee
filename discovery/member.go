package discovery

import (
	"fmt"
	"time"
)

// Status is a member's state as this node sees it.
type Status string

const (
	// StatusAlive: the member answers probes (or was heard from recently).
	StatusAlive Status = "alive"
	// StatusSuspect: the member stopped answering and may be declared
	// failed soon. Reserved: memberlist v0.5.4 tracks suspicion internally
	// but tells nobody (see the package documentation), so Members reports
	// a suspect member as alive until it is declared failed.
	StatusSuspect Status = "suspect"
	// StatusFailed: gossip declared the member dead without it announcing
	// a leave (crash, kill -9, partition). It turns alive again if it comes
	// back, and is dropped ReapAfter after it failed.
	StatusFailed Status = "failed"
	// StatusLeft: the member left gracefully (Gossip.Leave). It is dropped
	// ReapAfter after it left, or turns alive if it joins again.
	StatusLeft Status = "left"
)

// Member is one node of the gossip cluster, including this one.
type Member struct {
	// Name is the node's name (--name).
	Name string
	// Addr is the IP the member advertises for gossip; Port its gossip
	// port. Addr:Port is a valid --join address.
	Addr string
	Port int
	// Meta is what the member announced about itself. It is the zero Meta
	// when the member's meta could not be decoded (a foreign memberlist
	// node, or a corrupt update); such members are logged.
	Meta Meta
	// Status is alive, failed or left (see Status).
	Status Status
	// Since is when Status last changed, by this node's clock. A leader
	// reaps a server that has been failed for long enough with
	// time.Since(m.Since).
	Since time.Time
	// Boot is the random id of the member's current run (a new one each
	// time its process starts; "" when its meta could not be decoded).
	Boot string
}

// EventType tells what happened to a member.
type EventType int

const (
	// EventJoin: a member became alive: it joined, or came back after it
	// failed or left. The local node's own Join is the first event.
	EventJoin EventType = iota + 1
	// EventLeave: a member left gracefully. It may also follow an
	// EventFail of the same member, when news of its leave arrived after
	// its failure was detected; the later event is the truth.
	EventLeave
	// EventFail: gossip declared a member failed.
	EventFail
	// EventUpdate: an alive member changed its Meta (or address).
	EventUpdate
	// EventReap: a failed or left member was dropped from Members after
	// Config.ReapAfter.
	EventReap
	// EventResync: events were lost because nobody read Events for
	// Config.EventQueueSize events; Member is empty. Rebuild from Members
	// and carry on with the events that follow.
	EventResync
)

func (t EventType) String() string {
	switch t {
	case EventJoin:
		return "join"
	case EventLeave:
		return "leave"
	case EventFail:
		return "fail"
	case EventUpdate:
		return "update"
	case EventReap:
		return "reap"
	case EventResync:
		return "resync"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is a change of one member, delivered on Gossip.Events.
type Event struct {
	Type EventType
	// Member is the member as it is after the change (for EventReap, as
	// it was when dropped).
	Member Member
}

func (e Event) String() string {
	if e.Type == EventResync {
		return e.Type.String()
	}
	return fmt.Sprintf("%s %s (%s)", e.Type, e.Member.Name, e.Member.Status)
}
