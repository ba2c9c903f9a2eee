package httpapi

import "sort"

// RoutePatterns lists the permissions table's routes, for the external
// tests that walk every route.
func RoutePatterns() []string {
	out := make([]string, 0, len(permissions))
	for p := range permissions {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}
