package fsm

import "unique"

// intern makes the strings an instance shares with many others (its
// service and node names, tags, meta, check types) point at one copy each:
// a registry of 100,000 instances of a few hundred services holds each of
// those strings once, not once per instance. IDs and addresses are mostly
// unique and stay as they are.
func (i *Instance) intern() {
	i.Name = internString(i.Name)
	i.Node = internString(i.Node)
	for k, t := range i.Tags {
		i.Tags[k] = internString(t)
	}
	// equivalent mutant: interning only saves memory; the strings are equal either way
	if len(i.Meta) > 0 {
		m := make(map[string]string, len(i.Meta))
		for k, v := range i.Meta {
			m[internString(k)] = internString(v)
		}
		i.Meta = m
	}
	for k := range i.Checks {
		c := &i.Checks[k]
		c.Type, c.Name = internString(c.Type), internString(c.Name)
	}
}

func internString(s string) string {
	// equivalent mutant: interning only saves memory; the strings are equal either way
	if s == "" {
		return s
	}
	return unique.Make(s).Value()
}
