package config

import (
	"fmt"
	"reflect"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

var typeOfConfig = reflect.TypeOf(Config{})

// checkFields walks the YAML tree against the Go type and reports every key the type does not
// have, with its full path. yaml.v3's own KnownFields stops at the first and gives no path.
func checkFields(n *yaml.Node, t reflect.Type, path string, probs *[]Problem) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
				return
			}
			if _, ok := reflect.New(t).Interface().(yaml.Unmarshaler); ok {
				return
			}
			*probs = append(*probs, Problem{Path: orDoc(path), Line: n.Line, Msg: "expected a mapping of fields"})
			return
		}
		fields := yamlFields(t)
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := join(path, k.Value)
			if seen[k.Value] {
				*probs = append(*probs, Problem{Path: p, Line: k.Line, Msg: "set twice"})
				continue
			}
			seen[k.Value] = true
			ft, ok := fields[k.Value]
			if !ok {
				*probs = append(*probs, Problem{Path: p, Line: k.Line, Msg: "unknown field" + suggest(k.Value, fields)})
				continue
			}
			checkFields(v, ft, p, probs)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			if n.Tag != "!!null" {
				*probs = append(*probs, Problem{Path: orDoc(path), Line: n.Line, Msg: "expected a mapping"})
			}
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			checkFields(n.Content[i+1], t.Elem(), join(path, n.Content[i].Value), probs)
		}
	case reflect.Int, reflect.Int64, reflect.Uint32:
		if _, custom := reflect.New(t).Interface().(yaml.Unmarshaler); custom {
			return
		}
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!null") {
			*probs = append(*probs, Problem{Path: orDoc(path), Line: n.Line, Msg: fmt.Sprintf("want a whole number, got %q", n.Value)})
		}
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || (n.Tag != "!!bool" && n.Tag != "!!null") {
			*probs = append(*probs, Problem{Path: orDoc(path), Line: n.Line, Msg: fmt.Sprintf("want true or false, got %q", n.Value)})
		}
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			*probs = append(*probs, Problem{Path: orDoc(path), Line: n.Line, Msg: "want a string"})
		}
	case reflect.Slice:
		if n.Kind == yaml.SequenceNode {
			for i, c := range n.Content {
				checkFields(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i), probs)
			}
		}
	}
}

func yamlFields(t reflect.Type) map[string]reflect.Type {
	m := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		m[name] = f.Type
	}
	return m
}

func suggest(key string, fields map[string]reflect.Type) string {
	names := make([]string, 0, len(fields))
	for n := range fields {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if strings.EqualFold(strings.ReplaceAll(n, "_", ""), strings.ReplaceAll(strings.ReplaceAll(key, "-", ""), "_", "")) {
			return fmt.Sprintf(" (did you mean %q?)", n)
		}
	}
	return fmt.Sprintf(" (known: %s)", strings.Join(names, ", "))
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func orDoc(path string) string {
	if path == "" {
		return "(document)"
	}
	return path
}
