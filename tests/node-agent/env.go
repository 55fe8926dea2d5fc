package main

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// resolveEnv is a container's environment from its spec, as a kubelet computes it just
// before the container starts: envFrom (ConfigMaps and Secrets, with their prefix), then
// env in order, each value's $(VAR) references expanded against what came before, the
// downward API fields including those only known once the pod runs (status.podIP).
func (c *containerRuntime) resolveEnv(ctx context.Context, podIP string) ([]corev1.EnvVar, error) {
	client := c.pod.p.client.CoreV1()
	namespace := c.pod.pod.Namespace
	var env []corev1.EnvVar
	values := map[string]string{}
	set := func(name, value string) {
		if _, seen := values[name]; !seen {
			env = append(env, corev1.EnvVar{Name: name})
		}
		values[name] = value
	}
	for _, source := range c.spec.EnvFrom {
		var data map[string]string
		switch {
		case source.ConfigMapRef != nil:
			configMap, err := client.ConfigMaps(namespace).Get(ctx, source.ConfigMapRef.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) && optional(source.ConfigMapRef.Optional) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("envFrom configMap %q: %w", source.ConfigMapRef.Name, err)
			}
			data = configMap.Data
		case source.SecretRef != nil:
			secret, err := client.Secrets(namespace).Get(ctx, source.SecretRef.Name, metav1.GetOptions{})
			if apierrors.IsNotFound(err) && optional(source.SecretRef.Optional) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("envFrom secret %q: %w", source.SecretRef.Name, err)
			}
			data = map[string]string{}
			for key, value := range secret.Data {
				data[key] = string(value)
			}
		}
		for key, value := range data {
			set(source.Prefix+key, value)
		}
	}
	for _, variable := range c.spec.Env {
		if variable.ValueFrom == nil {
			set(variable.Name, expand(variable.Value, values))
			continue
		}
		from := variable.ValueFrom
		switch {
		case from.FieldRef != nil:
			value, err := c.fieldEnv(from.FieldRef.FieldPath, podIP)
			if err != nil {
				return nil, fmt.Errorf("env %s: %w", variable.Name, err)
			}
			set(variable.Name, value)
		case from.ConfigMapKeyRef != nil:
			ref := from.ConfigMapKeyRef
			configMap, err := client.ConfigMaps(namespace).Get(ctx, ref.Name, metav1.GetOptions{})
			if err != nil && !(apierrors.IsNotFound(err) && optional(ref.Optional)) {
				return nil, fmt.Errorf("env %s: configMap %q: %w", variable.Name, ref.Name, err)
			}
			if value, ok := configMap.Data[ref.Key]; ok {
				set(variable.Name, value)
			} else if !optional(ref.Optional) {
				return nil, fmt.Errorf("env %s: configMap %q has no key %q", variable.Name, ref.Name, ref.Key)
			}
		case from.SecretKeyRef != nil:
			ref := from.SecretKeyRef
			secret, err := client.Secrets(namespace).Get(ctx, ref.Name, metav1.GetOptions{})
			if err != nil && !(apierrors.IsNotFound(err) && optional(ref.Optional)) {
				return nil, fmt.Errorf("env %s: secret %q: %w", variable.Name, ref.Name, err)
			}
			if value, ok := secret.Data[ref.Key]; ok {
				set(variable.Name, string(value))
			} else if !optional(ref.Optional) {
				return nil, fmt.Errorf("env %s: secret %q has no key %q", variable.Name, ref.Name, ref.Key)
			}
		case from.ResourceFieldRef != nil:
			set(variable.Name, c.resourceEnv(from.ResourceFieldRef))
		default:
			return nil, fmt.Errorf("env %s: a valueFrom the test node agent does not support", variable.Name)
		}
	}
	for i := range env {
		env[i].Value = values[env[i].Name]
	}
	return env, nil
}

// fieldEnv is a downward API field as an environment variable holds it.
func (c *containerRuntime) fieldEnv(path, podIP string) (string, error) {
	c.pod.mu.Lock()
	pod := c.pod.pod.DeepCopy()
	c.pod.mu.Unlock()
	switch path {
	case "status.podIP", "status.podIPs":
		return podIP, nil
	case "status.hostIP", "status.hostIPs":
		return c.pod.p.cfg.nodeIP, nil
	case "spec.restartPolicy":
		return string(pod.Spec.RestartPolicy), nil
	case "spec.schedulerName":
		return pod.Spec.SchedulerName, nil
	}
	return fieldValue(pod, path)
}

// resourceEnv is a container's request or limit; an unset limit is the node's capacity,
// as a kubelet reports it.
func (c *containerRuntime) resourceEnv(ref *corev1.ResourceFieldSelector) string {
	resources := c.spec.Resources
	name, kind, _ := strings.Cut(ref.Resource, ".")
	list := resources.Limits
	if name == "requests" {
		list = resources.Requests
	}
	quantity, ok := list[corev1.ResourceName(kind)]
	if !ok {
		return "0"
	}
	divisor := ref.Divisor
	if divisor.IsZero() {
		return quantity.String()
	}
	return fmt.Sprint((quantity.MilliValue() + divisor.MilliValue() - 1) / divisor.MilliValue())
}

// expand replaces $(VAR) with VAR's value when VAR is defined; $$ escapes a dollar;
// anything else stays as written (Kubernetes' rules).
func expand(text string, values map[string]string) string {
	var out strings.Builder
	for i := 0; i < len(text); i++ {
		if text[i] != '$' || i+1 >= len(text) {
			out.WriteByte(text[i])
			continue
		}
		switch text[i+1] {
		case '$':
			out.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(text[i+2:], ')')
			if end < 0 {
				out.WriteString(text[i:])
				return out.String()
			}
			name := text[i+2 : i+2+end]
			if value, ok := values[name]; ok {
				out.WriteString(value)
			} else {
				out.WriteString(text[i : i+3+end])
			}
			i += 2 + end
		default:
			out.WriteByte('$')
		}
	}
	return out.String()
}
