package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/sidecarhq/sidecar/api"
	"github.com/sidecarhq/sidecar/discovery"
)

// cmdKeyring is `sidecar keyring list|install|use|remove [KEY]`: the
// gossip keyring of every member, through the local agent. A rotation is
// install NEW, use NEW, remove OLD. KEY "-" reads the key from stdin, so
// that it stays out of the process list and the shell history.
func cmdKeyring(ctx context.Context, s *streams, args []string) error {
	fs := newFlagSet("keyring")
	addr := addrFlag(fs)
	asJSON := fs.Bool("json", false, "print the raw JSON answer")
	pos, err := parseFlags(fs, args)
	if err != nil {
		return flagError(s, fs, err)
	}
	if len(pos) == 0 {
		return usageErrorf("keyring: want list, install KEY, use KEY or remove KEY")
	}
	op := pos[0]
	var key string
	switch op {
	case api.KeyringList:
		if err := wantArgs(fs, pos[1:], 0, ""); err != nil {
			return err
		}
	case api.KeyringInstall, api.KeyringUse, api.KeyringRemove:
		if err := wantArgs(fs, pos[1:], 1, "KEY"); err != nil {
			return usageErrorf("keyring %s: %v", op, strings.TrimPrefix(err.Error(), "keyring: "))
		}
		if key, err = readKey(s.stdin, pos[1]); err != nil {
			return usageErrorf("keyring %s: %v", op, err)
		}
	default:
		return usageErrorf("keyring: unknown operation %q: want list, install, use or remove", op)
	}
	c, err := newClient(addr)
	if err != nil {
		return err
	}

	var resp *api.KeyringResponse
	switch op {
	case api.KeyringList:
		resp, err = c.Keyring(ctx)
	case api.KeyringInstall:
		resp, err = c.KeyringInstall(ctx, key)
	case api.KeyringUse:
		resp, err = c.KeyringUse(ctx, key)
	case api.KeyringRemove:
		resp, err = c.KeyringRemove(ctx, key)
	}
	if err != nil {
		return fmt.Errorf("keyring %s: %w", op, err)
	}
	if *asJSON {
		if err := printJSON(s.stdout, resp); err != nil {
			return err
		}
	} else if err := printKeyring(s.stdout, resp); err != nil {
		return err
	}
	if len(resp.Failed) > 0 {
		return fmt.Errorf("keyring %s: failed on %d of %d members: %s", op, len(resp.Failed), resp.Members, failedList(resp.Failed))
	}
	return nil
}

// readKey returns the key argument, or the first line of stdin for "-",
// checked locally so that a typo is a usage error. The error never shows
// the key.
func readKey(stdin io.Reader, arg string) (string, error) {
	if arg == "-" {
		if stdin == nil {
			return "", fmt.Errorf("no key on stdin")
		}
		line, err := bufio.NewReader(io.LimitReader(stdin, 4096)).ReadString('\n')
		if err != nil && err != io.EOF {
			return "", fmt.Errorf("read key from stdin: %w", err)
		}
		arg = line
	}
	arg = strings.TrimSpace(arg)
	if _, err := discovery.ParseKey(arg); err != nil {
		return "", fmt.Errorf("KEY must be the base64 encoding of 16, 24 or 32 bytes (make one with 'sidecar keygen')")
	}
	return arg, nil
}

// printKeyring prints the keys with how many members hold each, then the
// members the operation failed on.
func printKeyring(w io.Writer, resp *api.KeyringResponse) error {
	tw := newTable(w)
	fmt.Fprintln(tw, "KEY\tMEMBERS\tPRIMARY")
	for _, k := range resp.Keys {
		primary := "-"
		switch {
		case k.Primary == 0:
		case k.Primary == resp.Members-len(resp.Failed):
			primary = "yes"
		default:
			primary = fmt.Sprintf("on %d", k.Primary)
		}
		fmt.Fprintf(tw, "%s\t%d/%d\t%s\n", k.Key, k.Members, resp.Members, primary)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(resp.Failed) > 0 {
		fmt.Fprintln(w)
		tw = newTable(w)
		fmt.Fprintln(tw, "FAILED\tWHY")
		for _, n := range sortedKeys(resp.Failed) {
			fmt.Fprintf(tw, "%s\t%s\n", n, resp.Failed[n])
		}
		return tw.Flush()
	}
	return nil
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// failedList names the failed members for the one-line error, at most
// five.
func failedList(failed map[string]string) string {
	names := sortedKeys(failed)
	var parts []string
	for _, n := range names[:min(len(names), 5)] {
		parts = append(parts, fmt.Sprintf("%s (%s)", n, failed[n]))
	}
	if len(names) > 5 {
		parts = append(parts, fmt.Sprintf("and %d more", len(names)-5))
	}
	return strings.Join(parts, ", ")
}
