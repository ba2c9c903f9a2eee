package discovery

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"

	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/fsm"
)

// Tags a server sets in its gossip meta.
const (
	// TagBootstrapped is set once a server holds Raft state, so that
	// servers starting later join the existing cluster instead of
	// bootstrapping a second one. Its value is "1" once the cluster has had
	// a leader; before, it is the bootstrap configuration's digest
	// (bootstrapTag), and a server of that same configuration that was late
	// to see the others bootstraps it too.
	TagBootstrapped = "bootstrapped"
	// TagFresh is set while a server that started with no Raft state waits
	// to be promoted to voter (election.Server.Fresh): its value is the
	// index of the latest committed configuration in which it saw itself a
	// non-voter, "0" when none. The leader demotes a voter whose value is
	// "0" (a server whose data dir was wiped: it may have forgotten a vote)
	// and promotes it once it has caught up.
	TagFresh = "fresh"
	// TagFounders is set on a server that took part in bootstrapping the
	// cluster, for as long as that run of its process lasts: the short boot
	// ids (foundersTag) of the servers its bootstrap configuration counted.
	// A fresh server whose own run is listed was running with no Raft state
	// when the cluster began, so it has never voted in it: it votes at once
	// (election.Server.OpenAsFounder), and the leader does not demote it. A
	// server whose data dir was wiped comes back as a new run, never
	// listed.
	TagFounders = "founders"
)

// stagePrefix starts the value of TagBootstrapped before the cluster has had
// a leader.
const stagePrefix = "b:"

// Writer applies registry commands through the Raft leader.
type Writer interface {
	Apply(ctx context.Context, cmd fsm.Command) (*fsm.Result, error)
}

// FormationConfig configures how gossip drives the Raft group.
type FormationConfig struct {
	// BootstrapExpect servers bootstrap Raft together once they see each
	// other (0: never bootstrap; join an existing cluster).
	BootstrapExpect int
	// ReapAfter is how long a server stays failed before the leader removes
	// it from Raft, and then only if the remaining voters keep a quorum.
	ReapAfter time.Duration
	// Interval is how often the leader reconciles even without events.
	Interval time.Duration
	// PromoteAfter is how long a non-voter must stay caught up before the
	// leader makes it a voter: following this leader in its term, its
	// applied index within MaxLag of the leader's commit index, at every
	// reconciliation in between.
	PromoteAfter time.Duration
	// MaxLag is how far behind the leader's commit index a caught-up
	// server may be.
	MaxLag uint64
	Logger *slog.Logger
}

// DefaultFormationConfig returns production settings.
func DefaultFormationConfig() FormationConfig {
	return FormationConfig{
		// A server that stays failed for 72h is gone for good; one that
		// comes back earlier keeps its vote, as in Consul.
		ReapAfter: 72 * time.Hour,
		// Events trigger reconciliation at once; this only repairs what a
		// failed write or a missed event left behind.
		Interval: time.Second,
		// Ten heartbeat timeouts with the default Raft timings, and at
		// least three reconciliations: long enough to tell a server that
		// keeps up from one passing through, short enough that the cluster
		// gets its fault tolerance back soon. (Consul's autopilot waits 10s
		// on timings three times as long.)
		PromoteAfter: 3 * time.Second,
		// A few commit batches under load (Consul's autopilot allows 250
		// trailing entries).
		MaxLag: 250,
	}
}

// Formation turns gossip membership into the Raft group and the node table:
// servers bootstrap once BootstrapExpect of them see each other; the leader
// adds servers that join as non-voters and promotes them to voters once
// they have caught up, demotes a voter that comes back with an empty data
// dir (and promotes it again once caught up), removes servers that leave,
// reaps servers failed past ReapAfter while quorum allows, and records
// every node's health (failed nodes' instances turn critical at once, left
// nodes are deregistered).
type Formation struct {
	cfg  FormationConfig
	g    *Gossip
	srv  *election.Server
	reg  *fsm.FSM
	w    Writer
	log  *slog.Logger
	wake chan struct{}
	// refused remembers the servers whose certificate did not verify, by
	// name and address, so each is logged once, not at every step.
	refused map[string]string
	// caughtUp holds, on the leader, since when each non-voter has been
	// seen caught up at every reconciliation.
	caughtUp map[string]stable
	// unsafe remembers the fresh voters not demoted because quorum did not
	// allow it, so each is logged once.
	unsafe map[string]bool
	// promoted holds when this leader promoted each server: its fresh tag
	// may still say "0" for a moment after, until the server has applied
	// its promotion and gossiped so.
	promoted map[string]time.Time
	// founders is this server's TagFounders once it has bootstrapped.
	founders string
}

// NewFormation returns the formation of a server.
func NewFormation(cfg FormationConfig, g *Gossip, srv *election.Server, w Writer) *Formation {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.ReapAfter <= 0 {
		cfg.ReapAfter = DefaultFormationConfig().ReapAfter
	}
	if cfg.PromoteAfter <= 0 {
		cfg.PromoteAfter = DefaultFormationConfig().PromoteAfter
	}
	if cfg.MaxLag == 0 {
		cfg.MaxLag = DefaultFormationConfig().MaxLag
	}
	return &Formation{cfg: cfg, g: g, srv: srv, reg: srv.FSM(), w: w,
		log: cfg.Logger.With("component", "formation"), wake: make(chan struct{}, 1), refused: map[string]string{},
		caughtUp: map[string]stable{}, unsafe: map[string]bool{}, promoted: map[string]time.Time{}}
}

// Wake asks for a reconciliation now (the agent forwards gossip events).
func (f *Formation) Wake() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// Run reconciles until ctx ends.
func (f *Formation) Run(ctx context.Context) {
	tick := time.NewTicker(f.cfg.Interval)
	defer tick.Stop()
	// Leadership changes matter at once: a new leader reconciles first. So
	// do the end of a non-voter's stabilisation period and a change of
	// what this server's tags must say (a fresh server seeing itself a
	// non-voter, or promoted).
	leaderTick := time.NewTicker(100 * time.Millisecond)
	defer leaderTick.Stop()
	wasLeader := false
	for {
		f.step(ctx)
		select {
		case <-ctx.Done():
			return
		case <-f.wake:
		case <-tick.C:
		case <-leaderTick.C:
			if l := f.srv.IsLeader(); l != wasLeader {
				wasLeader = l
			} else if !f.promotionDue() && !f.tagsStale() && !f.awaitingFounders() {
				continue
			}
		}
	}
}

func (f *Formation) step(ctx context.Context) {
	if err := f.bootstrap(ctx); err != nil {
		f.log.Warn("bootstrap", "err", err)
	}
	if f.awaitingFounders() {
		if by := f.countedBy(ctx, f.g.LocalMember()); by != "" &&
			f.srv.OpenAsFounder("a founder: server "+by+" counted this run of it in the configuration the cluster was bootstrapped with") {
			f.Wake() // its tags change
		}
	}
	if f.srv.IsLeader() {
		if err := f.reconcileRaft(ctx); err != nil {
			f.log.Warn("reconcile raft membership", "err", err)
		}
		if err := f.reconcileNodes(ctx); err != nil && ctx.Err() == nil {
			f.log.Warn("reconcile nodes", "err", err)
		}
	} else {
		// A later term starts its own stabilisation periods.
		clear(f.caughtUp)
		clear(f.promoted)
	}
}

func (f *Formation) hasState() bool {
	fut := f.srv.Raft().GetConfiguration()
	return fut.Error() == nil && len(fut.Configuration().Servers) > 0
}

// bootstrap bootstraps Raft once BootstrapExpect servers without state see
// each other. Every one of them computes the same configuration (the alive
// servers sorted by name), which Raft accepts from each. A server that sees
// a server with Raft state does not bootstrap, unless that server holds
// nothing but the very configuration this one would bootstrap (it was late
// to see the others, and the cluster has had no leader yet): then it
// bootstraps the same, and founds the cluster with them. Otherwise it is a
// fresh server joining an existing cluster, which adds it.
func (f *Formation) bootstrap(ctx context.Context) error {
	if f.hasState() {
		return f.advertise(ctx)
	}
	if f.cfg.BootstrapExpect <= 0 {
		return nil
	}
	var servers []Member
	stages := map[string]bool{}
	for _, m := range f.g.Members() {
		if m.Status != StatusAlive || !m.Meta.IsServer() {
			continue
		}
		if t := m.Meta.Tags[TagBootstrapped]; t != "" {
			if !strings.HasPrefix(t, stagePrefix) {
				// A cluster exists: its leader adds this server.
				return nil
			}
			stages[t] = true
		}
		if m.Meta.BootstrapExpect != 0 && m.Meta.BootstrapExpect != f.cfg.BootstrapExpect {
			return fmt.Errorf("server %s expects %d servers, this one %d: not bootstrapping", m.Name, m.Meta.BootstrapExpect, f.cfg.BootstrapExpect)
		}
		if !f.certified(ctx, m) {
			continue // does not count towards bootstrap-expect either
		}
		servers = append(servers, m)
	}
	if len(servers) < f.cfg.BootstrapExpect {
		return nil
	}
	sort.Slice(servers, func(i, j int) bool { return servers[i].Name < servers[j].Name })
	var conf raft.Configuration
	for _, m := range servers {
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(m.Name), Address: raft.ServerAddress(m.Meta.RaftAddr)})
	}
	if len(stages) > 0 {
		if len(stages) != 1 || !stages[bootstrapTag(conf)] {
			// Others bootstrapped another set of servers: their leader
			// adds this one.
			return nil
		}
		f.log.Info("bootstrapping raft with the configuration the other servers bootstrapped", "servers", len(conf.Servers))
	} else {
		f.log.Info("bootstrapping raft", "servers", len(conf.Servers))
	}
	founders := foundersTag(servers)
	if err := f.srv.BootstrapCluster(conf); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		return err
	}
	f.founders = founders
	return nil
}

// shortBoot is the part of a boot id TagFounders carries: 32 random bits
// tell one run of a server from its others well enough, and keep the tag
// small (gossip meta has 512 bytes in all).
func shortBoot(boot string) string {
	if len(boot) > 8 {
		return boot[:8]
	}
	return boot
}

// foundersTag is the TagFounders of a server that bootstrapped servers.
func foundersTag(servers []Member) string {
	ids := make([]string, 0, len(servers))
	for _, m := range servers {
		ids = append(ids, shortBoot(m.Boot))
	}
	return strings.Join(ids, ",")
}

// awaitingFounders reports whether this server is fresh and not yet
// promoted, and may learn that it is a founder (checked often: its vote
// may be needed at once).
func (f *Formation) awaitingFounders() bool {
	if f.cfg.BootstrapExpect <= 0 {
		return false
	}
	fresh, _ := f.srv.Fresh()
	return fresh
}

// countedBy returns the name of an alive server, certified as such, whose
// TagFounders lists m's current run ("" if none): m took part in
// bootstrapping the cluster with that run.
func (f *Formation) countedBy(ctx context.Context, m Member) string {
	if m.Boot == "" {
		return ""
	}
	boot := shortBoot(m.Boot)
	for _, o := range f.g.Members() {
		if o.Status != StatusAlive || !o.Meta.IsServer() {
			continue
		}
		if !slices.Contains(strings.Split(o.Meta.Tags[TagFounders], ","), boot) {
			continue
		}
		if o.Name == f.g.LocalMember().Name || f.certified(ctx, o) {
			return o.Name
		}
	}
	return ""
}

// bootstrapTag is the value of TagBootstrapped on a server that holds no
// more than the bootstrap configuration conf: a digest of it, the same on
// every server that bootstrapped it.
func bootstrapTag(conf raft.Configuration) string {
	servers := slices.Clone(conf.Servers)
	sort.Slice(servers, func(i, j int) bool { return servers[i].ID < servers[j].ID })
	h := sha256.New()
	for _, s := range servers {
		fmt.Fprintf(h, "%s\x00%s\x00%d\n", s.ID, s.Address, s.Suffrage)
	}
	return stagePrefix + hex.EncodeToString(h.Sum(nil)[:8])
}

// advertise keeps this server's tags in line with its Raft state:
// TagBootstrapped (the bootstrap configuration's digest until the cluster
// has had a leader, then "1") and TagFresh while the server waits to be
// promoted.
func (f *Formation) advertise(ctx context.Context) error {
	want, err := f.wantTags()
	if err != nil {
		return err
	}
	meta := f.g.LocalMember().Meta
	if !tagsDiffer(meta.Tags, want) {
		return nil
	}
	meta.Tags = maps.Clone(meta.Tags)
	if meta.Tags == nil {
		meta.Tags = map[string]string{}
	}
	for _, k := range advertisedTags {
		if v, ok := want[k]; ok {
			meta.Tags[k] = v
		} else {
			delete(meta.Tags, k)
		}
	}
	if err := f.g.UpdateMeta(ctx, meta); err != nil {
		return fmt.Errorf("advertise raft state: %w", err)
	}
	return nil
}

// wantTags returns the tags advertise sets, for a server that holds Raft
// state.
func (f *Formation) wantTags() (map[string]string, error) {
	want := map[string]string{TagBootstrapped: "1"}
	// The first leader appends an entry after the bootstrap configuration
	// (index 1) at once.
	if f.srv.Raft().LastIndex() <= 1 {
		fut := f.srv.Raft().GetConfiguration()
		if err := fut.Error(); err != nil {
			return nil, err
		}
		want[TagBootstrapped] = bootstrapTag(fut.Configuration())
	}
	if fresh, at := f.srv.Fresh(); fresh {
		want[TagFresh] = strconv.FormatUint(at, 10)
	}
	if f.founders != "" {
		want[TagFounders] = f.founders
	}
	return want, nil
}

// advertisedTags are the tags advertise keeps in line.
var advertisedTags = []string{TagBootstrapped, TagFresh, TagFounders}

func tagsDiffer(have, want map[string]string) bool {
	for _, k := range advertisedTags {
		h, hok := have[k]
		w, wok := want[k]
		if hok != wok || h != w {
			return true
		}
	}
	return false
}

// tagsStale reports whether this server's tags no longer say what its Raft
// state is (checked often: the leader acts on them).
func (f *Formation) tagsStale() bool {
	if !f.hasState() {
		return false
	}
	want, err := f.wantTags()
	return err == nil && tagsDiffer(f.g.LocalMember().Meta.Tags, want)
}

// certified reports whether the member that claims role=server in gossip
// holds a server certificate for its name at its Raft address (always true
// without TLS, where gossip is all there is to go by). A refusal is logged
// once per name and address.
func (f *Formation) certified(ctx context.Context, m Member) bool {
	err := f.srv.VerifyServer(ctx, m.Name, m.Meta.RaftAddr)
	if err == nil {
		delete(f.refused, m.Name)
		return true
	}
	if f.refused[m.Name] != m.Meta.RaftAddr {
		f.refused[m.Name] = m.Meta.RaftAddr
		f.log.Warn("gossip member claims to be a server without its server certificate; not a voter", "server", m.Name, "addr", m.Meta.RaftAddr, "err", err)
	}
	return false
}

// quorumSafe reports whether a voter may be removed: a quorum of the
// current configuration is alive, and a quorum of the configuration after
// the removal will be.
func quorumSafe(voters, alive, aliveAfter int) bool {
	return alive >= voters/2+1 && aliveAfter >= (voters-1)/2+1
}

// reconcileRaft adds joining servers as non-voters, promotes non-voters
// once they have caught up, demotes voters that came back with an empty
// data dir, and removes departed servers; one change per call.
func (f *Formation) reconcileRaft(ctx context.Context) error {
	fut := f.srv.Raft().GetConfiguration()
	if err := fut.Error(); err != nil {
		return err
	}
	conf := fut.Configuration()
	members := map[string]Member{}
	for _, m := range f.g.Members() {
		members[m.Name] = m
	}
	inConf := map[string]raft.Server{}
	voters, alive := 0, 0
	for _, s := range conf.Servers {
		inConf[string(s.ID)] = s
		if s.Suffrage == raft.Voter {
			voters++
			if m, ok := members[string(s.ID)]; ok && m.Status == StatusAlive {
				alive++
			}
		}
	}
	for name := range f.caughtUp {
		if s, ok := inConf[name]; !ok || s.Suffrage == raft.Voter {
			delete(f.caughtUp, name)
		}
	}
	for _, m := range members {
		if m.Status != StatusAlive || !m.Meta.IsServer() || m.Meta.RaftAddr == "" {
			continue
		}
		s, ok := inConf[m.Name]
		if ok && string(s.Address) == m.Meta.RaftAddr {
			var done bool
			var err error
			if s.Suffrage == raft.Voter {
				done, err = f.demoteFresh(ctx, m, voters, alive)
			} else {
				done, err = f.promote(ctx, m)
			}
			if done || err != nil {
				return err // one change at a time; the next step sees the new configuration
			}
			continue
		}
		if !f.certified(ctx, m) {
			continue
		}
		if ok && s.Suffrage == raft.Voter {
			// Same server, new address: it keeps its vote (and is demoted
			// next if it lost its state).
			f.log.Info("updating server address", "server", m.Name, "addr", m.Meta.RaftAddr, "was", s.Address)
			if err := f.srv.Raft().AddVoter(raft.ServerID(m.Name), raft.ServerAddress(m.Meta.RaftAddr), 0, 10*time.Second).Error(); err != nil {
				return fmt.Errorf("update address of %s: %w", m.Name, err)
			}
			return nil
		}
		f.log.Info("adding server as non-voter", "server", m.Name, "addr", m.Meta.RaftAddr,
			"why", "joined; it becomes a voter once caught up", "promote_after", f.cfg.PromoteAfter)
		if err := f.srv.Raft().AddNonvoter(raft.ServerID(m.Name), raft.ServerAddress(m.Meta.RaftAddr), 0, 10*time.Second).Error(); err != nil {
			return fmt.Errorf("add non-voter %s: %w", m.Name, err)
		}
		return nil
	}
	self, _ := f.srv.Leader()
	for id, s := range inConf {
		if id == self {
			continue
		}
		m, known := members[id]
		var why string
		switch {
		case known && m.Status == StatusLeft:
			why = "left"
		case known && m.Status == StatusFailed && time.Since(m.Since) >= f.cfg.ReapAfter:
			why = "failed too long"
		case !known:
			why = "gone from gossip"
		default:
			continue
		}
		aliveAfter := alive
		if known && m.Status == StatusAlive {
			aliveAfter--
		}
		// A non-voter counts towards no quorum.
		if why != "left" && s.Suffrage == raft.Voter && !quorumSafe(voters, alive, aliveAfter) {
			f.log.Warn("not removing server: quorum would be lost", "server", id, "why", why, "voters", voters, "alive", alive)
			continue
		}
		f.log.Info("removing server", "server", id, "why", why)
		if err := f.srv.Raft().RemoveServer(raft.ServerID(id), 0, 10*time.Second).Error(); err != nil {
			return fmt.Errorf("remove server %s: %w", id, err)
		}
		delete(f.caughtUp, id)
		return nil
	}
	return nil
}

// demoteFresh makes a voter that came back with no Raft state a non-voter
// (it is promoted again once caught up), when its gossip meta says it never
// saw itself a non-voter since it started fresh, and quorum allows: the
// voters left must still form a quorum among themselves, or the leader could
// commit nothing, the demotion included. It reports whether it changed the
// configuration.
func (f *Formation) demoteFresh(ctx context.Context, m Member, voters, alive int) (bool, error) {
	if v, ok := m.Meta.Tags[TagFresh]; !ok || v != "0" {
		delete(f.unsafe, m.Name)
		return false, nil
	}
	if self, _ := f.srv.Leader(); self == m.Name {
		return false, nil
	}
	if at, ok := f.promoted[m.Name]; ok && time.Since(at) < promotedGrace {
		return false, nil // its tag is older than its promotion
	}
	if by := f.countedBy(ctx, m); by != "" {
		// A founder: it opens its gate itself once it sees so. Demoted, it
		// would leave fewer voters, and the cluster could not lose a
		// server until it was promoted again.
		return false, nil
	}
	if !quorumSafe(voters, alive, alive-1) {
		if !f.unsafe[m.Name] {
			f.unsafe[m.Name] = true
			f.log.Warn("not demoting a server that came back with an empty data dir: the other voters alive are no quorum without it; it stays a voter that does not vote",
				"server", m.Name, "voters", voters, "alive", alive)
		}
		return false, nil
	}
	delete(f.unsafe, m.Name)
	if !f.certified(ctx, m) {
		return false, nil
	}
	f.log.Info("demoting server to non-voter", "server", m.Name, "addr", m.Meta.RaftAddr,
		"why", "it came back with no raft state (empty data dir), so it may have forgotten a vote; it becomes a voter again once caught up",
		"promote_after", f.cfg.PromoteAfter)
	if err := f.srv.Raft().DemoteVoter(raft.ServerID(m.Name), 0, 10*time.Second).Error(); err != nil {
		return false, fmt.Errorf("demote %s: %w", m.Name, err)
	}
	return true, nil
}

// promotionDue reports whether a non-voter's stabilisation period has
// ended, so that it is checked, and promoted, now rather than at the next
// Interval.
func (f *Formation) promotionDue() bool {
	for _, st := range f.caughtUp {
		if time.Since(st.since) >= f.cfg.PromoteAfter {
			return true
		}
	}
	return false
}

// stable is a non-voter's stabilisation period: since when it has been
// caught up, and the leader's commit index then.
type stable struct {
	since  time.Time
	commit uint64
}

// promote makes a non-voter a voter once it has stayed caught up for
// PromoteAfter: at every reconciliation since, it followed this leader in
// its term with its applied index within MaxLag of the leader's commit
// index, and it has now applied every entry committed when the period
// began (MaxLag alone would let a server that holds nothing pass in a
// young cluster). It reports whether it changed the configuration.
func (f *Formation) promote(ctx context.Context, m Member) (bool, error) {
	commit := f.srv.Raft().CommitIndex()
	applied, ok, why := f.isCaughtUp(ctx, m)
	st, was := f.caughtUp[m.Name]
	if ok && was && time.Since(st.since) >= f.cfg.PromoteAfter && applied < st.commit {
		ok, why = false, fmt.Sprintf("applied index %d, still short of commit index %d of %v ago", applied, st.commit, time.Since(st.since).Round(time.Millisecond))
	}
	if !ok {
		if was {
			f.log.Info("non-voter fell behind; its stabilisation period starts again", "server", m.Name, "why", why)
		}
		delete(f.caughtUp, m.Name)
		return false, nil
	}
	if !was {
		f.caughtUp[m.Name] = stable{since: time.Now(), commit: commit}
		f.log.Info("non-voter caught up; promoting it once it stays so", "server", m.Name, "state", why, "promote_after", f.cfg.PromoteAfter)
		return false, nil
	}
	if time.Since(st.since) < f.cfg.PromoteAfter {
		return false, nil
	}
	if !f.certified(ctx, m) {
		return false, nil
	}
	f.log.Info("promoting server to voter", "server", m.Name, "addr", m.Meta.RaftAddr,
		"why", "caught up", "state", why, "caught_up_for", time.Since(st.since).Round(time.Millisecond))
	if err := f.srv.Raft().AddVoter(raft.ServerID(m.Name), raft.ServerAddress(m.Meta.RaftAddr), 0, 10*time.Second).Error(); err != nil {
		return false, fmt.Errorf("promote %s: %w", m.Name, err)
	}
	delete(f.caughtUp, m.Name)
	f.promoted[m.Name] = time.Now()
	return true, nil
}

// promotedGrace is how long after promoting a server the leader ignores its
// fresh tag: far longer than the server takes to apply its promotion and
// gossip its new tags (a few heartbeats and a broadcast).
const promotedGrace = 10 * time.Second

// isCaughtUp asks a non-voter for its Raft status and reports its applied
// index, whether it follows this leader in its term with that index within
// MaxLag of the commit index, and its state in words.
func (f *Formation) isCaughtUp(ctx context.Context, m Member) (uint64, bool, string) {
	self, _ := f.srv.Leader()
	term := f.srv.Raft().CurrentTerm()
	commit := f.srv.Raft().CommitIndex()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	st, err := f.srv.PeerStatus(ctx, m.Meta.RaftAddr)
	switch {
	case err != nil:
		return 0, false, fmt.Sprintf("status: %v", err)
	case st.Node != m.Name:
		return 0, false, fmt.Sprintf("%s answers as %q", m.Meta.RaftAddr, st.Node)
	case st.Term != term || st.Leader != self:
		return st.AppliedIndex, false, fmt.Sprintf("in term %d following %q, not this leader in term %d", st.Term, st.Leader, term)
	case st.AppliedIndex+f.cfg.MaxLag < commit:
		return st.AppliedIndex, false, fmt.Sprintf("applied index %d, commit index %d", st.AppliedIndex, commit)
	}
	return st.AppliedIndex, true, fmt.Sprintf("applied index %d of commit index %d in term %d", st.AppliedIndex, commit, term)
}

// reconcileNodes records what gossip says of every node.
func (f *Formation) reconcileNodes(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var errs []error
	for _, m := range f.g.Members() {
		node, known := f.reg.Node(m.Name)
		var cmd fsm.Command
		switch m.Status {
		case StatusAlive:
			if !known || node.Address != m.Addr || node.Meta["role"] != m.Meta.Role {
				cmd = &fsm.RegisterNode{Name: m.Name, Address: m.Addr, Meta: map[string]string{"role": m.Meta.Role}}
			} else if node.Status != fsm.NodeAlive {
				cmd = &fsm.SetNodeStatus{Name: m.Name, Status: fsm.NodeAlive}
			}
		case StatusFailed:
			if known && node.Status != fsm.NodeFailed {
				cmd = &fsm.SetNodeStatus{Name: m.Name, Status: fsm.NodeFailed}
			}
		case StatusLeft:
			if known {
				cmd = &fsm.DeregisterNode{Name: m.Name}
			}
		}
		if cmd == nil {
			continue
		}
		f.log.Info("node health from gossip", "node", m.Name, "status", string(m.Status), "command", cmd.Type().String())
		if _, err := f.w.Apply(ctx, cmd); err != nil && !errors.Is(err, fsm.ErrUnknownNode) {
			errs = append(errs, fmt.Errorf("%s %s: %w", cmd.Type(), m.Name, err))
		}
	}
	return errors.Join(errs...)
}
