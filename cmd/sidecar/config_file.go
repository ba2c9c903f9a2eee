// The config file: strict YAML/JSON decoding with errors that name the key
// and its line.

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/sidecarhq/sidecar/api"
)

// fileConfig is what a config file holds.
type fileConfig struct {
	values    []fileValue
	services  []api.ServiceRegistration
	elections []ElectionConfig
}

type fileValue struct {
	st    *setting
	value string
	line  int
}

// loadConfigFile reads a YAML (.yaml, .yml) or JSON (.json) file whose keys
// are the agent's flag names plus services and elections. JSON is parsed by
// the YAML parser too, once checked to be JSON, so both report unknown keys
// with the same line numbers.
func loadConfigFile(path string) (*fileConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, configErrorf("config file: %v", err)
	}
	return parseConfigFile(path, b)
}

// parseConfigFile parses the content b of the config file at path; the
// extension of path selects the format.
func parseConfigFile(path string, b []byte) (*fileConfig, error) {
	switch ext := strings.ToLower(filepath.Ext(path)); ext {
	case ".yaml", ".yml":
	case ".json":
		var v any
		if err := json.Unmarshal(b, &v); err != nil {
			return nil, configErrorf("config file %s: %v", path, jsonErrorLine(b, err))
		}
	default:
		return nil, configErrorf("config file %s: unknown extension %q (want .yaml, .yml or .json)", path, ext)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, configErrorf("config file %s: %s", path, oneLine(err.Error()))
	}
	fc := &fileConfig{}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return fc, nil // empty file
	}
	root := doc.Content[0]
	if root.Kind != yaml.MappingNode {
		return nil, configErrorf("config file %s: line %d: want a mapping of settings", path, root.Line)
	}
	errf := func(n *yaml.Node, format string, args ...any) error {
		return fileError(path, n.Line, fmt.Sprintf(format, args...))
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], resolveAlias(root.Content[i+1])
		key := k.Value
		if seen[key] {
			return nil, errf(k, "duplicate key %q", key)
		}
		seen[key] = true
		switch key {
		case "services":
			if err := decodeStrict(v, &fc.services, "services"); err != nil {
				return nil, fileError(path, err.line, err.msg)
			}
			continue
		case "elections":
			if err := decodeStrict(v, &fc.elections, "elections"); err != nil {
				return nil, fileError(path, err.line, err.msg)
			}
			continue
		case "config-file":
			return nil, errf(k, "config-file cannot be set inside a config file")
		}
		st := lookupSetting(key)
		if st == nil {
			if alt := strings.ReplaceAll(key, "_", "-"); alt != key && lookupSetting(alt) != nil {
				return nil, errf(k, "unknown key %q (did you mean %q?)", key, alt)
			}
			return nil, errf(k, "unknown key %q", key)
		}
		var val string
		switch {
		case v.Kind == yaml.ScalarNode && v.Tag == "!!null":
			continue // "key:" with nothing: leave the default
		case v.Kind == yaml.ScalarNode:
			val = v.Value
		case v.Kind == yaml.SequenceNode && st.kind == kindList:
			var items []string
			for _, it := range v.Content {
				it = resolveAlias(it)
				if it.Kind != yaml.ScalarNode {
					return nil, errf(it, "%s: want a list of strings", key)
				}
				items = append(items, it.Value)
			}
			val = strings.Join(items, ",")
		default:
			return nil, errf(v, "%s: want a single value", key)
		}
		fc.values = append(fc.values, fileValue{st: st, value: val, line: v.Line})
	}
	return fc, nil
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// nodeError is a config file mistake; line is 0 when the message already
// names it.
type nodeError struct {
	line int
	msg  string
}

func fileError(path string, line int, msg string) error {
	if line > 0 {
		return configErrorf("config file %s: line %d: %s", path, line, msg)
	}
	return configErrorf("config file %s: %s", path, msg)
}

// decodeStrict decodes n into out after checking every mapping key against
// out's yaml tags, because yaml.v3's own strict mode reports errors over
// several lines and without the path to the key.
func decodeStrict(n *yaml.Node, out any, path string) *nodeError {
	budget := maxConfigNodes
	if e := checkKeys(n, reflect.TypeOf(out).Elem(), path, &budget); e != nil {
		return e
	}
	if err := n.Decode(out); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) && len(te.Errors) > 0 {
			// "line 7: cannot unmarshal ..." already names the line.
			return &nodeError{msg: strings.TrimSpace(te.Errors[0]) + " in " + path}
		}
		return &nodeError{line: n.Line, msg: path + ": " + oneLine(err.Error())}
	}
	return nil
}

// maxConfigNodes bounds the nodes checkKeys visits: aliases can make a small
// file expand exponentially ("billion laughs").
const maxConfigNodes = 100_000

func checkKeys(n *yaml.Node, t reflect.Type, path string, budget *int) *nodeError {
	n = resolveAlias(n)
	if *budget--; *budget < 0 {
		return &nodeError{line: n.Line, msg: "too many nodes after expanding aliases"}
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Slice:
		if n.Kind == yaml.SequenceNode && t.Elem().Kind() != reflect.Uint8 {
			for i, it := range n.Content {
				if e := checkKeys(it, t.Elem(), fmt.Sprintf("%s[%d]", path, i), budget); e != nil {
					return e
				}
			}
		}
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return nil // Decode reports the type mismatch
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			f, ok := yamlField(t, k.Value)
			if !ok {
				return &nodeError{line: k.Line, msg: fmt.Sprintf("unknown key %q in %s", k.Value, path)}
			}
			if e := checkKeys(n.Content[i+1], f.Type, path+"."+k.Value, budget); e != nil {
				return e
			}
		}
	}
	return nil
}

func yamlField(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		if name == key && f.IsExported() {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// jsonErrorLine adds the line number to a JSON syntax error.
func jsonErrorLine(b []byte, err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		line := 1 + strings.Count(string(b[:min(int(se.Offset), len(b))]), "\n")
		return fmt.Sprintf("line %d: %v", line, err)
	}
	return err.Error()
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
