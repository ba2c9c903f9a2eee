package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/election"
	"github.com/sidecarhq/sidecar/fsm"
	"github.com/sidecarhq/sidecar/healthcheck"
	"github.com/sidecarhq/sidecar/httpapi"
	"github.com/sidecarhq/sidecar/internal/crashpoint"
	"github.com/sidecarhq/sidecar/localstate"
)

// The registrations this agent owns: kept in its local state before they
// are answered, written through Raft, their checks run from the local
// state (never from a scan of the registry), and put right by anti-entropy.

// RegisterService implements httpapi.Agent: the instance is kept in the
// local state (on disk) first, then registered. A refused registration
// leaves the local state as it was; one whose outcome is unknown stays, and
// anti-entropy makes the registry agree.
func (a *Agent) RegisterService(ctx context.Context, in *fsm.Instance) (*fsm.Result, error) {
	if bugAckBeforeCommit {
		return a.registerAckedEarly(ctx, *in)
	}
	return a.register(ctx, *in, localstate.SourceAPI)
}

func (a *Agent) register(ctx context.Context, in fsm.Instance, source string) (*fsm.Result, error) {
	unlock := a.state.LockID(in.ID)
	defer unlock()
	if err := ctx.Err(); err != nil {
		// Abandoned while it waited for the id: it changes nothing, rather
		// than land after a later write of the same id.
		return nil, err
	}
	prev, had, err := a.state.Service(in.ID)
	if err != nil {
		return nil, err
	}
	if err := a.state.PutService(localstate.Service{Instance: in, Source: source}); err != nil {
		return nil, fmt.Errorf("keep registration %q in the local state: %w", in.ID, err)
	}
	crashpoint.Hit("localstate-written")
	res, err := a.Apply(ctx, &fsm.RegisterInstance{Instance: in})
	if refused(err) {
		a.undo(in.ID, prev, had)
		return res, err
	}
	a.runChecks(in)
	if err != nil {
		a.antiEntropy.Unknown(in.ID)
	}
	return res, err
}

// DeregisterService implements httpapi.Agent. An instance the local state
// knows but the registry lacks (a restore, a reap) is deregistered all the
// same.
func (a *Agent) DeregisterService(ctx context.Context, id string) (*fsm.Result, error) {
	unlock := a.state.LockID(id)
	defer unlock()
	if err := ctx.Err(); err != nil {
		return nil, err // abandoned while it waited for the id
	}
	return a.deregisterLocked(ctx, id)
}

func (a *Agent) deregisterLocked(ctx context.Context, id string) (*fsm.Result, error) {
	prev, had, err := a.state.Service(id)
	if err != nil {
		return nil, err
	}
	if had {
		if _, err := a.state.DeleteService(id); err != nil {
			return nil, fmt.Errorf("forget registration %q in the local state: %w", id, err)
		}
	}
	res, err := a.Apply(ctx, &fsm.DeregisterInstance{Node: a.cfg.Name, ID: id})
	switch {
	case err == nil:
	case errors.Is(err, fsm.ErrUnknownInstance) && had:
		err = nil
	case refused(err):
		a.undo(id, prev, had)
		return res, err
	default:
		a.antiEntropy.Unknown(id)
	}
	a.checks.RemoveInstance(id)
	if res == nil {
		res = &fsm.Result{Index: a.reg.Index()}
	}
	return res, err
}

// refused reports whether a write surely changed nothing: the registry
// refused it, or no leader took it. Anything else (a lost leader, a timeout,
// a cut connection) may have been applied, so the local state keeps what
// was asked and anti-entropy makes the registry agree with it: the write
// then takes effect late, never half.
func refused(err error) bool {
	if err == nil {
		return false
	}
	if fsm.Refused(err) || errors.Is(err, election.ErrPermissionDenied) {
		return true
	}
	return errors.Is(err, election.ErrNotLeader) && !errors.Is(err, election.ErrUnknownOutcome)
}

// undo puts a local record back as it was before a refused write.
func (a *Agent) undo(id string, prev localstate.Service, had bool) {
	var err error
	if had {
		err = a.state.PutService(prev)
	} else {
		_, err = a.state.DeleteService(id)
	}
	if err != nil {
		// Anti-entropy will write what the local state says; the app was
		// told its request failed.
		a.log.Error("could not undo a refused registration in the local state", "instance", id, "err", err)
	}
}

// runChecks (re)starts the checks of one local instance, carrying over the
// status the registry holds so that a restart does not flap them.
func (a *Agent) runChecks(def fsm.Instance) {
	inst := healthcheck.Instance{ID: def.ID, Checks: def.Checks}
	if reg, ok := a.reg.Instance(a.cfg.Name, def.ID); ok && localstate.SameDefinition(reg, &def) {
		inst.Checks = reg.Checks
	}
	if err := a.checks.SyncInstance(inst); err != nil && !errors.Is(err, healthcheck.ErrClosed) {
		a.log.Warn("some checks not run", "instance", def.ID, "err", err)
	}
}

// loadConfigServices makes the local state's config-file services those
// of the file: the file is declarative, so one removed from it is
// deregistered (by the next anti-entropy pass).
func (a *Agent) loadConfigServices(services []api.ServiceRegistration) error {
	want := map[string]fsm.Instance{}
	for _, svc := range services {
		in, err := httpapi.InstanceFromRegistration(svc, a.cfg.Name)
		if err != nil {
			return fmt.Errorf("service %q from config: %w", svc.ID, err)
		}
		want[in.ID] = *in
	}
	stored, err := a.state.Services()
	if err != nil {
		return err
	}
	for _, svc := range stored {
		if _, keep := want[svc.Instance.ID]; !keep && svc.Source == localstate.SourceConfig {
			unlock := a.state.LockID(svc.Instance.ID)
			_, err := a.state.DeleteService(svc.Instance.ID)
			unlock()
			if err != nil {
				return err
			}
			a.checks.RemoveInstance(svc.Instance.ID)
		}
	}
	for _, in := range want {
		unlock := a.state.LockID(in.ID)
		err := a.state.PutService(localstate.Service{Instance: in, Source: localstate.SourceConfig})
		unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

// ReloadServices applies the config file's services again (SIGHUP): new
// ones are registered, changed ones corrected, removed ones deregistered.
func (a *Agent) ReloadServices(ctx context.Context, services []api.ServiceRegistration) error {
	a.mu.Lock()
	ready := a.ready
	a.mu.Unlock()
	if !ready {
		// The join applies the file it started with; the local state is
		// not compared with the registry before then.
		return errors.New("agent still joining: reload once it is ready")
	}
	if err := a.loadConfigServices(services); err != nil {
		return err
	}
	for _, svc := range services {
		svc, ok, err := a.state.Service(svc.ID)
		if err != nil {
			return err
		}
		if ok {
			a.runChecks(svc.Instance)
		}
	}
	return a.antiEntropy.Sync(ctx)
}

// adoptRegistered takes into a new local state the instances the registry
// already holds for this node: an agent upgraded from a version without
// local state, or given a new data dir, keeps serving what its apps
// registered instead of removing it.
func (a *Agent) adoptRegistered() error {
	for _, in := range a.reg.NodeInstances(a.cfg.Name) {
		if _, ok, err := a.state.Service(in.ID); err != nil {
			return err
		} else if ok {
			continue
		}
		if err := a.state.PutService(localstate.Service{Instance: *in, Source: localstate.SourceAPI}); err != nil {
			return err
		}
	}
	return nil
}

// startLocalState runs at join, once the node entry and session exist: the
// registry is brought in line with the local state (what a restart must
// bring back), the checks start, and anti-entropy keeps it so from then on.
func (a *Agent) startLocalState(ctx context.Context, bg context.Context) error {
	// Compare with a registry that holds every acknowledged write, so that
	// a client whose copy lags does not write what is already there.
	if err := a.retry(ctx, func() error { return a.ConsistentRead(ctx) }); err != nil {
		return fmt.Errorf("read the registry: %w", err)
	}
	if !a.state.Adopted() {
		if err := a.adoptRegistered(); err != nil {
			return err
		}
		if err := a.state.MarkAdopted(); err != nil {
			return err
		}
	}
	if err := a.loadConfigServices(a.cfg.Services); err != nil {
		return err
	}
	if err := a.retry(ctx, func() error { return a.antiEntropy.Sync(ctx) }); err != nil {
		// Keep starting: the loop below tries again.
		a.log.Warn("anti-entropy at start left differences", "err", err)
	}
	stored, err := a.state.Services()
	if err != nil {
		return err
	}
	for _, svc := range stored {
		a.runChecks(svc.Instance)
	}
	a.goBackground(func() { a.antiEntropy.Run(bg) })
	return nil
}

// campaignRetrying campaigns, trying again while no leader can take it or
// the node session is being replaced (a restart into a cluster that is
// electing, or whose leader has not yet seen this node's new session):
// such an error at start must not stop the agent.
func (a *Agent) campaignRetrying(ctx context.Context, spec election.CampaignSpec) error {
	return a.retry(ctx, func() error {
		_, err := a.local.Campaign(ctx, spec)
		return err
	})
}

// campaignLocal campaigns for the config file's elections and the
// candidacies made through the API before a restart.
func (a *Agent) campaignLocal(ctx context.Context) error {
	for _, e := range a.cfg.Elections {
		cand := e.Candidate
		if cand == "" {
			cand = a.cfg.Name
		}
		spec := election.CampaignSpec{Election: e.Name, Candidate: cand, Value: e.Value, Service: e.Service}
		if err := a.campaignRetrying(ctx, spec); err != nil {
			return fmt.Errorf("campaign %q from config: %w", e.Name, err)
		}
	}
	for _, c := range a.state.Candidacies() {
		err := a.campaignRetrying(ctx, election.CampaignSpec{Election: c.Election, Candidate: c.Candidate, Value: c.Value, Service: c.Service})
		if errors.Is(err, fsm.ErrUnknownInstance) {
			// Tied to an instance deregistered since: the candidacy went
			// with it.
			err = a.state.DeleteCandidacy(c.Election, c.Candidate)
		}
		if err != nil {
			return fmt.Errorf("campaign %q again: %w", c.Election, err)
		}
	}
	return nil
}

// holds is election.Local with the candidacies made on the node session
// kept in the local state, so that a restart campaigns for them again.
// Candidacies on a lease of the app's own live with that lease instead.
type holds struct {
	*election.Local
	a *Agent
}

func (h holds) Campaign(ctx context.Context, spec election.CampaignSpec) (api.CampaignResult, error) {
	res, err := h.Local.Campaign(ctx, spec)
	if err != nil || spec.Lease != "" {
		return res, err
	}
	c := localstate.Candidacy{Election: spec.Election, Candidate: spec.Candidate, Value: spec.Value, Service: spec.Service}
	if err := h.a.state.PutCandidacy(c); err != nil {
		return res, fmt.Errorf("keep candidacy in the local state: %w", err)
	}
	return res, nil
}

func (h holds) Resign(ctx context.Context, election, candidate string) error {
	if err := h.Local.Resign(ctx, election, candidate); err != nil && !errors.Is(err, fsm.ErrNotCandidate) {
		return err
	} else if err != nil {
		if derr := h.a.state.DeleteCandidacy(election, candidate); derr != nil {
			return derr
		}
		return err
	}
	return h.a.state.DeleteCandidacy(election, candidate)
}

// Transfer hands an election over; the candidate it moved from left the
// election, so this agent no longer campaigns for it after a restart.
func (h holds) Transfer(ctx context.Context, election, from, to string) (api.TransferResult, error) {
	if from == "" {
		// Resolved by the election layer; named here to forget it.
		if st := h.Local.Self(election); st.Candidate != "" {
			from = st.Candidate
		}
	}
	res, err := h.Local.Transfer(ctx, election, from, to)
	if err != nil {
		return res, err
	}
	return res, h.a.state.DeleteCandidacy(election, from)
}

// UpdateTTLCheck feeds a TTL check (PUT /v1/checks/{id}/pass|warn|fail)
// and waits until this agent's copy of the registry shows the status.
func (a *Agent) UpdateTTLCheck(ctx context.Context, checkID, status, note string) error {
	if err := a.checks.TTLUpdate(checkID, status, note); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		watch := a.reg.Watch()
		if in, ok := a.reg.CheckOwner(a.cfg.Name, checkID); ok {
			for _, c := range in.Checks {
				if c.ID == checkID && c.Status == status {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("check %s not yet %s in the registry: %w", checkID, status, ctx.Err())
		case <-watch:
		}
	}
}

// checkNotifier writes check status changes, and deregistrations of
// instances critical for too long, through Raft.
type checkNotifier struct{ a *Agent }

func (n checkNotifier) UpdateCheck(ctx context.Context, checkID, status, output string) error {
	_, err := n.a.Apply(ctx, &fsm.UpdateCheck{Node: n.a.cfg.Name, CheckID: checkID, Status: status, Output: output})
	return err
}

// DeregisterCritical deregisters an instance critical for longer than its
// deregister_critical_after, and forgets it locally: it is gone, not lost.
func (n checkNotifier) DeregisterCritical(ctx context.Context, instanceID string) error {
	unlock := n.a.state.LockID(instanceID)
	defer unlock()
	prev, had, err := n.a.state.Service(instanceID)
	if err != nil {
		return err
	}
	if had {
		if _, err := n.a.state.DeleteService(instanceID); err != nil {
			return err
		}
	}
	_, err = n.a.Apply(ctx, &fsm.DeregisterInstance{Node: n.a.cfg.Name, ID: instanceID})
	if err != nil && !errors.Is(err, fsm.ErrUnknownInstance) && refused(err) {
		n.a.undo(instanceID, prev, had)
		return err
	}
	if err != nil && !errors.Is(err, fsm.ErrUnknownInstance) {
		n.a.antiEntropy.Unknown(instanceID)
	}
	n.a.checks.RemoveInstance(instanceID)
	return nil
}
