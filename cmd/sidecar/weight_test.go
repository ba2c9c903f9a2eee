package main

import (
	"testing"

	"github.com/sidecarhq/sidecar/httpapi"
)

// TestParseAgentConfig_serviceWeight: a service in the config file carries
// its weight to the instance the agent registers, in YAML and JSON; a bad
// one stops the agent when it registers the service.
func TestParseAgentConfig_serviceWeight(t *testing.T) {
	for _, tt := range []struct{ file, content string }{
		{"w.yaml", "name: n1\nservices:\n  - name: web\n    port: 80\n    weight: 3\n  - name: api\n    port: 81\n"},
		{"w.json", `{"name": "n1", "services": [{"name": "web", "port": 80, "weight": 3}, {"name": "api", "port": 81}]}`},
	} {
		t.Run(tt.file, func(t *testing.T) {
			setupConfigTest(t)
			c, err := parseAgentConfig([]string{"--config-file", writeConfig(t, tt.file, tt.content)})
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Services) != 2 || c.Services[0].Weight != 3 || c.Services[1].Weight != 0 {
				t.Fatalf("services %+v, want weights 3 and none", c.Services)
			}
			in, err := httpapi.InstanceFromRegistration(c.Services[0], c.Name)
			if err != nil || in.EffectiveWeight() != 3 {
				t.Fatalf("instance %+v, %v: want weight 3", in, err)
			}
			in, err = httpapi.InstanceFromRegistration(c.Services[1], c.Name)
			if err != nil || in.EffectiveWeight() != 1 {
				t.Fatalf("instance %+v, %v: want weight 1", in, err)
			}
		})
	}
	setupConfigTest(t)
	c, err := parseAgentConfig([]string{"--config-file", writeConfig(t, "bad.yaml", "name: n1\nservices:\n  - name: web\n    port: 80\n    weight: 70000\n")})
	if err == nil {
		if _, err = httpapi.InstanceFromRegistration(c.Services[0], c.Name); err == nil {
			t.Fatal("weight 70000 from a config file accepted")
		}
	}
}
