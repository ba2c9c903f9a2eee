// Package acl decides what a request may do: it parses token rules (name
// prefixes granting read or write on each resource, longest prefix wins),
// resolves the secret a request carries to the token the registry stores
// (by the SHA-256 of the secret), and carries the caller through a
// request's context to whatever writes on its behalf. It reads the
// registry's tokens through a small interface and keeps no state of its own
// beyond a cache of parsed rules.
package acl
