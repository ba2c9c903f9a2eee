package discovery

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
)

// ErrConfig wraps every reason New rejects a Config.
var ErrConfig = errors.New("discovery: invalid config")

// KeySize is the length of a gossip encryption key: AES-256, what
// `sidecar keygen` prints (base64) and --encrypt accepts. The keyring also
// takes 16- and 24-byte keys (AES-128, -192), as memberlist does.
const KeySize = 32

// Config configures a Gossip. Start from DefaultConfig (or TestConfig) and
// override fields; New does not modify it.
type Config struct {
	// Name is this node's name, unique in the cluster (--name).
	Name string

	// BindAddr is the gossip listen "ip:port", UDP and TCP on the same port
	// (--bind-addr). Port 0 picks a free port; Gossip.Port tells which.
	BindAddr string

	// AdvertiseAddr is the IP other members use to reach this node
	// (--advertise-addr), without a port: the port advertised is the bound
	// one. Empty: the bind IP, or when binding to all addresses (0.0.0.0,
	// ::) the first non-loopback IPv4 address of an interface that is up,
	// else 127.0.0.1. The agent normally passes its own resolved value.
	AdvertiseAddr string

	// Join lists gossip "host:port" addresses of members to join (--join).
	// Start joins them in the background, retrying until one answers.
	Join []string

	// JoinRetryInterval is the pause after the first failed join attempt;
	// it doubles after every further failure up to JoinRetryMax (with ±20%
	// jitter, so that a restarted fleet does not retry in lockstep).
	JoinRetryInterval time.Duration
	JoinRetryMax      time.Duration

	// EncryptKey, when set, encrypts and authenticates all gossip with
	// AES-GCM (memberlist's keyring); it must be 16, 24 or 32 bytes
	// (--encrypt, decoded, is KeySize). Members that share no key, or one
	// with a key and one without, cannot talk to each other. It is the
	// first key of the keyring, which the keyring operations (InstallKey,
	// UseKey, RemoveKey) change at runtime; with a KeyringFile that
	// exists, the file's keyring is used instead.
	EncryptKey []byte

	// KeyringFile, when set, keeps the keyring in this file (the agent's
	// <data dir>/keyring.json), so that keys installed at runtime survive
	// a restart: read at New when it exists (gossip is then encrypted even
	// without EncryptKey), created from EncryptKey otherwise, and rewritten
	// atomically on every change. Empty: the keyring lives in memory.
	KeyringFile string

	// KeyringTimeout bounds how long a cluster-wide keyring operation
	// waits for the members' answers; a member that has not answered by
	// then is reported as failed.
	KeyringTimeout time.Duration

	// Meta is what this node tells the others about itself: role and the
	// addresses of its Raft, HTTP and DNS servers. Gossip.UpdateMeta
	// changes it later.
	Meta Meta

	// ReapAfter is how long a failed or left member stays in Members (with
	// its status) before it is dropped with an EventReap. Keeping it lets
	// a Raft leader act on the failure (and the HTTP API show it); a member
	// that comes back before then simply turns alive again.
	ReapAfter time.Duration

	// ReconnectInterval is how often one failed (not left) member, picked
	// at random, is contacted again with a full state exchange. After a
	// partition heals, memberlist alone learns that a member it declared
	// failed is back only when someone gossips a fresh message to it or at
	// a push-pull with a random peer (every 30s): up to a minute in which
	// that node's services stay out of DNS. 0 turns reconnection off.
	ReconnectInterval time.Duration

	// wrapTransport lets in-package tests put a filter (network cuts)
	// between memberlist and its sockets.
	wrapTransport func(memberlist.Transport) memberlist.Transport

	// BroadcastTimeout bounds how long UpdateMeta and Leave wait for their
	// message to be gossiped before they return (the message keeps spreading
	// afterwards until Shutdown).
	BroadcastTimeout time.Duration

	// EventQueueSize caps the events queued for the Events channel while
	// nobody reads it. On overflow the queue is replaced by a single
	// EventResync (see Events).
	EventQueueSize int

	// Memberlist holds memberlist's timing and protocol settings. New copies
	// it and sets the fields Config owns (Name, BindAddr/Port, Advertise*,
	// SecretKey, Keyring, Delegate, Events, Logger, LogOutput and the other
	// delegates); leave those alone. nil means DefaultConfig's.
	Memberlist *memberlist.Config

	// Logger receives the component's logs and memberlist's (at their own
	// levels); nil discards them.
	Logger *slog.Logger

	// Registerer receives the metrics (sidecar_gossip_*); nil keeps them
	// private. Shutdown unregisters them.
	Registerer prometheus.Registerer
}

// DefaultConfig returns the production settings: memberlist's LAN profile
// with faster failure detection, so that a killed node is declared failed
// about 2-3 seconds after it dies, on a LAN of up to a few dozen members.
func DefaultConfig() Config {
	name, _ := os.Hostname()
	return Config{
		Name: name,
		// SPEC.md's --bind-addr default: memberlist's port on every address.
		BindAddr: "0.0.0.0:7946",
		// 200ms, doubling to 5s: a seed that starts a moment later (the
		// usual case when a cluster starts at once) is found within a
		// fraction of a second, and a node that waits long for a seed
		// costs that seed at most one TCP connection per 5 seconds.
		JoinRetryInterval: 200 * time.Millisecond,
		JoinRetryMax:      5 * time.Second,
		// 72h, as Consul's reconnect_timeout: a failed member stays listed
		// over a long weekend, so an operator sees what went away and a
		// leader has all the time its own reap policy needs; a left
		// member's entry costs a few hundred bytes.
		ReapAfter: 72 * time.Hour,
		// 2s: a healed node is seen alive again within a few seconds
		// (after its refutation spreads); a member that really is gone
		// costs one failed connection attempt per interval, shared among
		// all failed members.
		ReconnectInterval: 2 * time.Second,
		// 5s: a broadcast reaches every member of a 1000-node cluster in
		// well under a second with the timings below (12 retransmits, 3
		// peers per 100ms gossip round), so 5s only runs out when the
		// network is in trouble; it also bounds Leave's first phase.
		BroadcastTimeout: 5 * time.Second,
		// 4096 events: a whole cluster joining at once fits many times
		// over, and the queue stays below a megabyte.
		EventQueueSize: 4096,
		// 5s: a member answers a keyring request over one TCP stream in
		// milliseconds (a fsync of the keyring file included); one that
		// has not answered in 5s is unreachable or stalled, and an
		// operator waiting at the command line is told so.
		KeyringTimeout: 5 * time.Second,
		Memberlist:     defaultMemberlistConfig(),
	}
}

// defaultMemberlistConfig is memberlist.DefaultLANConfig with what sidecar
// changes. Failure detection in memberlist (SWIM with Lifeguard) takes:
// the time until some member probes the dead node (each member probes one
// other per ProbeInterval, round robin), one probe (ProbeTimeout for the
// direct ping, then indirect and TCP pings until the end of the interval),
// then the suspicion timeout, SuspicionMult × max(1, log10 N) ×
// ProbeInterval, which shrinks from SuspicionMaxTimeoutMult times that
// towards it as other members independently confirm the suspicion.
func defaultMemberlistConfig() *memberlist.Config {
	c := memberlist.DefaultLANConfig()
	// Kept from DefaultLANConfig, and why they guard against false
	// positives: IndirectChecks 3 (three other members must also fail to
	// reach a node before it is suspected, so one bad link does not count),
	// TCP fallback pings on (a lost UDP packet does not count),
	// AwarenessMaxMultiplier 8 (Lifeguard: a member that is itself slow,
	// e.g. starved of CPU, probes less often and waits longer instead of
	// accusing healthy peers), SuspicionMaxTimeoutMult 6 (an accusation no
	// one confirms waits 6 times longer, time for the accused to refute),
	// RetransmitMult 4, GossipNodes 3, PushPullInterval 30s, TCPTimeout
	// 10s, GossipToTheDeadTime 30s, UDPBufferSize 1400.

	// 400ms instead of 1s: a dead node is probed, and so suspected, 2.5×
	// as soon. Probing costs one small UDP packet (and its ack) per member
	// per interval.
	c.ProbeInterval = 400 * time.Millisecond
	// 200ms instead of 500ms: LAN round trips are well under a
	// millisecond, so 200ms is still ~100× the normal RTT; a late ack only
	// moves on to indirect and TCP probes, which get the other half of the
	// interval, and then merely to suspicion, which the node refutes.
	c.ProbeTimeout = 200 * time.Millisecond
	// 4, as DefaultLANConfig, over the shorter interval: a suspect is
	// declared failed after 1.6s in a cluster of up to 10 members (3.2s at
	// 100, 4.8s at 1000), or up to 6× longer while fewer than 2 other
	// members confirm the suspicion. 1.6s (4 probe rounds) is many round
	// trips for a live but paused node (GC, a short network blip) to hear
	// the suspicion and refute it; a node that stays silent that long is
	// not serving its clients either. Measured on loopback (tests): a
	// killed member is failed on every other member 2.3-3.1s after the
	// kill in clusters of 3 and 5.
	c.SuspicionMult = 4
	// 100ms instead of 200ms: suspicion, failure, leave and meta updates
	// spread in rounds of this interval; sidecar wants a failed node's
	// services out of DNS quickly, and on a LAN the extra packets are cheap.
	c.GossipInterval = 100 * time.Millisecond
	return c
}

// TestConfig returns settings for several members in one process on
// loopback: a free port on 127.0.0.1 and timings about 4× faster than
// DefaultConfig (a killed member is failed everywhere after 0.5-0.8s),
// still slow enough not to declare live members failed under the race
// detector. Name is empty: set it.
func TestConfig() Config {
	c := DefaultConfig()
	c.Name = ""
	c.BindAddr = "127.0.0.1:0"
	// Fast retries: tests start seeds late on purpose.
	c.JoinRetryInterval = 20 * time.Millisecond
	c.JoinRetryMax = 250 * time.Millisecond
	c.ReconnectInterval = 250 * time.Millisecond

	m := memberlist.DefaultLANConfig()
	// Loopback answers in microseconds; 100ms probes with a 50ms timeout
	// still allow for a scheduler hiccup under -race.
	m.ProbeInterval = 100 * time.Millisecond
	m.ProbeTimeout = 50 * time.Millisecond
	// Suspicion: 4 × 100ms = 400ms minimum, 2.4s without confirmations.
	m.SuspicionMult = 4
	m.GossipInterval = 20 * time.Millisecond
	// Frequent full syncs make convergence (and leave intents) quick.
	m.PushPullInterval = time.Second
	// A stream to a loopback peer that does not answer in 1s never will.
	m.TCPTimeout = time.Second
	// Dead members are forgotten by memberlist (and their names free
	// again) after this; short so tests can restart a member.
	m.GossipToTheDeadTime = 2 * time.Second
	c.Memberlist = m
	return c
}

// normalize validates c and returns the memberlist configuration it
// implies (without delegates).
func (c Config) normalize() (*memberlist.Config, error) {
	if c.Name == "" {
		return nil, fmt.Errorf("%w: empty name", ErrConfig)
	}
	host, portStr, err := net.SplitHostPort(c.BindAddr)
	if err != nil {
		return nil, fmt.Errorf("%w: bind addr %q: %v", ErrConfig, c.BindAddr, err)
	}
	bindIP := net.ParseIP(host)
	if bindIP == nil {
		return nil, fmt.Errorf("%w: bind addr %q: host must be an IP address", ErrConfig, c.BindAddr)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return nil, fmt.Errorf("%w: bind addr %q: bad port", ErrConfig, c.BindAddr)
	}
	adv := c.AdvertiseAddr
	if adv == "" {
		adv = defaultAdvertise(bindIP)
	}
	advIP := net.ParseIP(adv)
	if advIP == nil || advIP.IsUnspecified() {
		return nil, fmt.Errorf("%w: advertise addr %q: must be a specific IP address (no port)", ErrConfig, adv)
	}
	for _, j := range c.Join {
		if h, p, err := net.SplitHostPort(j); err != nil || h == "" || p == "" {
			return nil, fmt.Errorf("%w: join address %q: want host:port", ErrConfig, j)
		}
	}
	if c.JoinRetryInterval <= 0 || c.JoinRetryMax < c.JoinRetryInterval {
		return nil, fmt.Errorf("%w: join retry interval %v / max %v: want 0 < interval <= max",
			ErrConfig, c.JoinRetryInterval, c.JoinRetryMax)
	}
	if c.EncryptKey != nil && !validKey(c.EncryptKey) {
		return nil, fmt.Errorf("%w: encrypt key is %d bytes, want 16, 24 or 32", ErrConfig, len(c.EncryptKey))
	}
	if c.KeyringTimeout <= 0 {
		return nil, fmt.Errorf("%w: keyring timeout must be positive", ErrConfig)
	}
	if c.ReconnectInterval < 0 {
		return nil, fmt.Errorf("%w: reconnect interval must not be negative", ErrConfig)
	}
	if c.ReapAfter <= 0 {
		return nil, fmt.Errorf("%w: reap after must be positive", ErrConfig)
	}
	if c.BroadcastTimeout <= 0 {
		return nil, fmt.Errorf("%w: broadcast timeout must be positive", ErrConfig)
	}
	if c.EventQueueSize < 1 {
		return nil, fmt.Errorf("%w: event queue size must be at least 1", ErrConfig)
	}

	var mc memberlist.Config
	if c.Memberlist != nil {
		mc = *c.Memberlist
	} else {
		mc = *defaultMemberlistConfig()
	}
	if mc.ProbeInterval <= 0 || mc.ProbeTimeout <= 0 || mc.ProbeTimeout >= mc.ProbeInterval {
		return nil, fmt.Errorf("%w: memberlist probe timeout %v must be positive and below the probe interval %v",
			ErrConfig, mc.ProbeTimeout, mc.ProbeInterval)
	}
	mc.Name = c.Name
	mc.BindAddr = bindIP.String()
	mc.BindPort = port
	mc.AdvertiseAddr = advIP.String()
	mc.AdvertisePort = port // memberlist replaces it with the bound port when port is 0
	mc.Transport = nil
	// New sets Keyring from EncryptKey and KeyringFile.
	mc.SecretKey = nil
	mc.Keyring = nil
	mc.LogOutput = nil
	mc.Delegate, mc.Events, mc.Conflict, mc.Merge, mc.Ping, mc.Alive = nil, nil, nil, nil, nil, nil
	return &mc, nil
}

// defaultAdvertise is the bind IP when it names one address, else the first
// non-loopback IPv4 address of an interface that is up, else 127.0.0.1.
func defaultAdvertise(bind net.IP) string {
	if !bind.IsUnspecified() {
		return bind.String()
	}
	ifs, _ := net.Interfaces()
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			if ip4 := ipn.IP.To4(); ip4 != nil && !ip4.IsLoopback() && !ip4.IsLinkLocalUnicast() {
				return ip4.String()
			}
		}
	}
	return "127.0.0.1"
}
