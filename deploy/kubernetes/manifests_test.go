// Package kubernetes_test checks the manifests in this directory: every
// object decodes strictly into its k8s.io/api type (so a typo in a field
// name fails here, not in a cluster), every pod spec meets the restricted
// Pod Security Standard (with the agent's hostPath volumes as the one,
// named exception) and runs with a read-only root file system, and the
// Moatless configs they carry pass the binary's own config validation.
package kubernetes_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"

	"github.com/moatless/moatless/internal/config"
)

// hostPathAllowed is the exception to the restricted profile: the agent
// DaemonSet's node directories, and nothing else.
var hostPathAllowed = map[string][]string{
	"DaemonSet/moatless-agent/moatless-agent": {"/etc/moatless", "/run/moatless", "/var/lib/moatless-agent"},
}

type object struct {
	file string
	kind string
	name string
	ns   string
	obj  any
}

func load(t *testing.T) []object {
	t.Helper()
	files, err := filepath.Glob("*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	var out []object
	for _, f := range files {
		if f == "kustomization.yaml" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, doc := range bytes.Split(b, []byte("\n---\n")) {
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			var meta struct {
				Kind     string `json:"kind"`
				Metadata struct {
					Name      string `json:"name"`
					Namespace string `json:"namespace"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal(doc, &meta); err != nil {
				t.Fatalf("%s document %d: %v", f, i+1, err)
			}
			var obj any
			switch meta.Kind {
			case "Namespace":
				obj = &corev1.Namespace{}
			case "ServiceAccount":
				obj = &corev1.ServiceAccount{}
			case "ConfigMap":
				obj = &corev1.ConfigMap{}
			case "Service":
				obj = &corev1.Service{}
			case "PersistentVolumeClaim":
				obj = &corev1.PersistentVolumeClaim{}
			case "StatefulSet":
				obj = &appsv1.StatefulSet{}
			case "DaemonSet":
				obj = &appsv1.DaemonSet{}
			case "CronJob":
				obj = &batchv1.CronJob{}
			case "PodDisruptionBudget":
				obj = &policyv1.PodDisruptionBudget{}
			case "NetworkPolicy":
				obj = &networkingv1.NetworkPolicy{}
			default:
				t.Fatalf("%s document %d: kind %q has no check here", f, i+1, meta.Kind)
			}
			if err := yaml.UnmarshalStrict(doc, obj); err != nil {
				t.Fatalf("%s: %s %s: %v", f, meta.Kind, meta.Metadata.Name, err)
			}
			if meta.Metadata.Name == "" || (meta.Kind != "Namespace" && meta.Metadata.Namespace == "") {
				t.Fatalf("%s: %s without a name or namespace", f, meta.Kind)
			}
			out = append(out, object{f, meta.Kind, meta.Metadata.Name, meta.Metadata.Namespace, obj})
		}
	}
	return out
}

func TestManifestsParse(t *testing.T) {
	objs := load(t)
	kinds := map[string]bool{}
	for _, o := range objs {
		kinds[o.kind] = true
	}
	for _, want := range []string{"StatefulSet", "DaemonSet", "Service", "ConfigMap", "NetworkPolicy", "PodDisruptionBudget", "CronJob"} {
		if !kinds[want] {
			t.Errorf("no %s in deploy/kubernetes", want)
		}
	}
	// kustomization.yaml lists every file.
	k, err := os.ReadFile("kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var kust struct {
		Resources []string `json:"resources"`
	}
	if err := yaml.Unmarshal(k, &kust); err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if !slices.Contains(kust.Resources, o.file) {
			t.Errorf("kustomization.yaml does not list %s", o.file)
		}
	}
}

// podSpecs returns every pod template with a name for messages.
func podSpecs(objs []object) map[string]*corev1.PodSpec {
	out := map[string]*corev1.PodSpec{}
	for _, o := range objs {
		key := fmt.Sprintf("%s/%s/%s", o.kind, o.ns, o.name)
		switch v := o.obj.(type) {
		case *appsv1.StatefulSet:
			out[key] = &v.Spec.Template.Spec
		case *appsv1.DaemonSet:
			out[key] = &v.Spec.Template.Spec
		case *batchv1.CronJob:
			out[key] = &v.Spec.JobTemplate.Spec.Template.Spec
		}
	}
	return out
}

// TestPodsRestricted checks each control of the restricted Pod Security
// Standard (https://kubernetes.io/docs/concepts/security/pod-security-standards/)
// on every pod spec, plus a read-only root file system.
func TestPodsRestricted(t *testing.T) {
	specs := podSpecs(load(t))
	if len(specs) < 3 {
		t.Fatalf("only %d pod specs", len(specs))
	}
	restrictedVolume := func(v corev1.Volume) bool {
		s := v.VolumeSource
		return s.ConfigMap != nil || s.CSI != nil || s.DownwardAPI != nil || s.EmptyDir != nil || s.Ephemeral != nil ||
			s.PersistentVolumeClaim != nil || s.Projected != nil || s.Secret != nil
	}
	for name, ps := range specs {
		t.Run(name, func(t *testing.T) {
			fail := func(format string, args ...any) { t.Errorf(name+": "+format, args...) }
			if ps.HostNetwork || ps.HostPID || ps.HostIPC {
				fail("host namespaces")
			}
			if ps.AutomountServiceAccountToken == nil || *ps.AutomountServiceAccountToken {
				fail("service account token mounted (none of these pods calls the Kubernetes API)")
			}
			psc := ps.SecurityContext
			if psc == nil {
				fail("no pod securityContext")
				return
			}
			for _, v := range ps.Volumes {
				if v.HostPath != nil {
					if !slices.Contains(hostPathAllowed[name], v.HostPath.Path) {
						fail("hostPath volume %s (%s) outside the documented exception", v.Name, v.HostPath.Path)
					}
					continue
				}
				if !restrictedVolume(v) {
					fail("volume %s: type not allowed by restricted", v.Name)
				}
			}
			podNonRoot := psc.RunAsNonRoot != nil && *psc.RunAsNonRoot
			podSeccomp := psc.SeccompProfile != nil && (psc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault || psc.SeccompProfile.Type == corev1.SeccompProfileTypeLocalhost)
			if psc.RunAsUser != nil && *psc.RunAsUser == 0 {
				fail("runAsUser 0")
			}
			for _, c := range append(slices.Clone(ps.InitContainers), ps.Containers...) {
				sc := c.SecurityContext
				if sc == nil {
					fail("container %s: no securityContext", c.Name)
					continue
				}
				if sc.Privileged != nil && *sc.Privileged {
					fail("container %s: privileged", c.Name)
				}
				if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
					fail("container %s: allowPrivilegeEscalation must be false", c.Name)
				}
				if !podNonRoot && (sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot) {
					fail("container %s: runAsNonRoot", c.Name)
				}
				if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
					fail("container %s: runAsUser 0", c.Name)
				}
				if !podSeccomp && (sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault) {
					fail("container %s: seccomp RuntimeDefault", c.Name)
				}
				if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
					fail("container %s: capabilities must drop ALL", c.Name)
				} else {
					for _, a := range sc.Capabilities.Add {
						if a != "NET_BIND_SERVICE" {
							fail("container %s: adds capability %s", c.Name, a)
						}
					}
				}
				if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
					fail("container %s: root file system must be read-only", c.Name)
				}
				for _, p := range c.Ports {
					if p.HostPort != 0 {
						fail("container %s: hostPort", c.Name)
					}
				}
				if c.Resources.Limits.Memory().IsZero() {
					fail("container %s: no memory limit", c.Name)
				}
			}
		})
	}
}

// TestNamespacesEnforce: the control plane's namespace enforces
// restricted; the agent's audits against it.
func TestNamespacesEnforce(t *testing.T) {
	for _, o := range load(t) {
		ns, ok := o.obj.(*corev1.Namespace)
		if !ok {
			continue
		}
		want := "restricted"
		key := "pod-security.kubernetes.io/enforce"
		if ns.Name == "moatless-agent" {
			key = "pod-security.kubernetes.io/audit"
		}
		if ns.Labels[key] != want {
			t.Errorf("namespace %s: %s=%q, want %q", ns.Name, key, ns.Labels[key], want)
		}
	}
}

// TestConfigsValidate: the configs in the ConfigMaps are what the binary
// accepts.
func TestConfigsValidate(t *testing.T) {
	env := func(string) string { return "" }
	seen := 0
	for _, o := range load(t) {
		cm, ok := o.obj.(*corev1.ConfigMap)
		if !ok {
			continue
		}
		for key, v := range cm.Data {
			var err error
			switch key {
			case "server.yaml":
				var c config.Server
				c, err = config.ParseServer(strings.NewReader(v), env)
				if err == nil && len(c.ServerNames) < 3 {
					err = fmt.Errorf("server_names must name every replica")
				}
			case "agent.yaml":
				var c config.Agent
				c, err = config.ParseAgent(strings.NewReader(v), env)
				if err == nil && len(c.Server) < 2 {
					err = fmt.Errorf("the agent must know every replica to fail over")
				}
			default:
				continue
			}
			seen++
			if err != nil {
				t.Errorf("ConfigMap %s key %s: %v", cm.Name, key, err)
			}
		}
	}
	if seen != 2 {
		t.Fatalf("checked %d configs, want the server's and the agent's", seen)
	}
}
