package acl

import (
	"fmt"

	"github.com/sidecarhq/sidecar/fsm"
)

// CommandPermission is the permission a registry write needs when a token
// sends it: the Raft leader checks it again for every write that arrives
// with a token, so a client agent can use only the tokens its apps gave it.
// The name is "" for resources without names (lease, operator, acl).
func CommandPermission(store TokenStore, cmd fsm.Command) (res Resource, name string, want Access, ok bool) {
	switch c := cmd.(type) {
	case *fsm.RegisterNode:
		return Node, c.Name, Write, true
	case *fsm.DeregisterNode:
		return Node, c.Name, Write, true
	case *fsm.SetNodeStatus:
		return Node, c.Name, Write, true
	case *fsm.RegisterInstance:
		return Service, c.Instance.Name, Write, true
	case *fsm.DeregisterInstance:
		if in, found := store.Instance(c.Node, c.ID); found {
			return Service, in.Name, Write, true
		}
		// Unknown: the registry refuses it, changing nothing.
		return Service, "", Read, true
	case *fsm.UpdateCheck:
		if in, found := store.CheckOwner(c.Node, c.CheckID); found {
			return Service, in.Name, Write, true
		}
		return Service, "", Read, true
	case *fsm.GrantLease:
		if c.Session {
			return Node, c.Node, Write, true
		}
		return Lease, "", Write, true
	case *fsm.RevokeLease, *fsm.ExpireLease:
		return Lease, "", Write, true
	case *fsm.AcquireLock:
		return Lock, c.Name, Write, true
	case *fsm.ReleaseLock:
		return Lock, c.Name, Write, true
	case *fsm.Campaign:
		return Election, c.Election, Write, true
	case *fsm.Resign:
		return Election, c.Election, Write, true
	case *fsm.Transfer:
		return Election, c.Election, Write, true
	case *fsm.ACLBootstrap:
		// Anyone, once: the registry refuses a second.
		return ACL, "", None, true
	case *fsm.ACLSetToken, *fsm.ACLDeleteToken:
		return ACL, "", Write, true
	}
	return "", "", None, false
}

// AuthorizeCommand checks a write a caller with a token sent: the token's
// permission for it (see CommandPermission) and that the command claims no
// other token's ownership (its By is the caller's token ID).
func (r *Resolver) AuthorizeCommand(c *Caller, cmd fsm.Command) error {
	res, name, want, ok := CommandPermission(r.store, cmd)
	if !ok {
		return fmt.Errorf("%w: %s is not a command a request may send", ErrDenied, cmd.Type())
	}
	if want != None {
		if err := c.Check(res, name, want); err != nil {
			return err
		}
	}
	if by, has := commandBy(cmd); has && by != c.By() && !c.Management {
		return fmt.Errorf("%w: %s acts for token %q, the request carries %s", ErrDenied, cmd.Type(), by, c.who())
	}
	return nil
}

// commandBy is the token a command acts for.
func commandBy(cmd fsm.Command) (string, bool) {
	switch c := cmd.(type) {
	case *fsm.GrantLease:
		return c.Owner, true
	case *fsm.RevokeLease:
		return c.By, true
	case *fsm.AcquireLock:
		return c.By, true
	case *fsm.ReleaseLock:
		return c.By, true
	case *fsm.Campaign:
		return c.By, true
	case *fsm.Resign:
		return c.By, true
	case *fsm.Transfer:
		return c.By, true
	}
	return "", false
}
