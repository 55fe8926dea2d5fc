package main

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// refreshEvery is how often Secret, ConfigMap, downward API and token volumes are
// brought up to date (a kubelet's sync period is about a minute; tests want less).
const refreshEvery = 5 * time.Second

// volumeSet is where each of a pod's volumes is on the node.
type volumeSet struct {
	paths   map[string]string
	content []*contentVolume
}

// file is one file of a content volume.
type file struct {
	data []byte
	mode os.FileMode
}

// contentVolume is a volume whose files the agent writes (secret, configMap, projected,
// downwardAPI), rewritten atomically when its sources change.
type contentVolume struct {
	dir     string
	produce func(ctx context.Context) (map[string]file, error)
	last    map[string]file
}

func prepareVolumes(ctx context.Context, r *podRuntime) (*volumeSet, error) {
	set := &volumeSet{paths: map[string]string{}}
	for _, volume := range r.pod.Spec.Volumes {
		dir := filepath.Join(r.dir, "volumes", volume.Name)
		switch {
		case volume.EmptyDir != nil:
			if err := os.MkdirAll(dir, 0o777); err != nil {
				return nil, err
			}
		case volume.HostPath != nil:
			path, err := hostPath(volume.HostPath)
			if err != nil {
				return nil, fmt.Errorf("volume %q: %w", volume.Name, err)
			}
			dir = path
		default:
			produce, err := contentOf(r, volume)
			if err != nil {
				return nil, fmt.Errorf("volume %q: %w", volume.Name, err)
			}
			content := &contentVolume{dir: dir, produce: produce}
			if err := content.sync(ctx); err != nil {
				return nil, fmt.Errorf("volume %q: %w", volume.Name, err)
			}
			set.content = append(set.content, content)
		}
		set.paths[volume.Name] = dir
	}
	return set, nil
}

// refreshVolumes keeps content volumes current until the pod ends.
func (r *podRuntime) refreshVolumes() {
	for {
		select {
		case <-r.ctx.Done():
			return
		case <-time.After(refreshEvery):
		}
		r.mu.Lock()
		set := r.volumes
		r.mu.Unlock()
		for _, content := range set.content {
			if err := content.sync(r.ctx); err != nil && r.ctx.Err() == nil {
				r.logf("refreshing volume %s: %v", filepath.Base(content.dir), err)
			}
		}
	}
}

func (r *podRuntime) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pod %s: %s\n", r.name(), fmt.Sprintf(format, args...))
}

// hostPath is a hostPath volume's path on the node (whose own directories the node's
// mount namespace holds, see nodeDirs), checked or created per its type.
func hostPath(source *corev1.HostPathVolumeSource) (string, error) {
	resolved := filepath.Clean(source.Path)
	if !filepath.IsAbs(resolved) {
		return "", fmt.Errorf("hostPath %q is not absolute", source.Path)
	}
	kind := corev1.HostPathUnset
	if source.Type != nil {
		kind = *source.Type
	}
	info, statErr := os.Stat(resolved)
	switch kind {
	case corev1.HostPathDirectoryOrCreate:
		if statErr != nil {
			if err := os.MkdirAll(resolved, 0o755); err != nil {
				return "", err
			}
		}
	case corev1.HostPathFileOrCreate:
		if statErr != nil {
			if err := os.MkdirAll(filepath.Dir(resolved), 0o755); err != nil {
				return "", err
			}
			if err := os.WriteFile(resolved, nil, 0o644); err != nil {
				return "", err
			}
		}
	case corev1.HostPathDirectory:
		if statErr != nil || !info.IsDir() {
			return "", fmt.Errorf("hostPath type check failed: %s is not a directory", source.Path)
		}
	case corev1.HostPathFile:
		if statErr != nil || !info.Mode().IsRegular() {
			return "", fmt.Errorf("hostPath type check failed: %s is not a file", source.Path)
		}
	case corev1.HostPathSocket:
		if statErr != nil || info.Mode()&os.ModeSocket == 0 {
			return "", fmt.Errorf("hostPath type check failed: %s is not a socket", source.Path)
		}
	case corev1.HostPathUnset:
		if statErr != nil {
			// A kubelet mounts whatever is there; the mount needs a path, so make a directory.
			if err := os.MkdirAll(resolved, 0o755); err != nil {
				return "", err
			}
		}
	default:
		if statErr != nil {
			return "", fmt.Errorf("hostPath type check failed: %s does not exist", source.Path)
		}
	}
	return resolved, nil
}

// contentOf says how a content volume's files are made.
func contentOf(r *podRuntime, volume corev1.Volume) (func(ctx context.Context) (map[string]file, error), error) {
	switch {
	case volume.Secret != nil:
		source := volume.Secret
		return func(ctx context.Context) (map[string]file, error) {
			files := map[string]file{}
			return files, r.secretFiles(files, source.SecretName, source.Items, mode(source.DefaultMode), optional(source.Optional))
		}, nil
	case volume.ConfigMap != nil:
		source := volume.ConfigMap
		return func(ctx context.Context) (map[string]file, error) {
			files := map[string]file{}
			return files, r.configMapFiles(files, source.Name, source.Items, mode(source.DefaultMode), optional(source.Optional))
		}, nil
	case volume.DownwardAPI != nil:
		source := volume.DownwardAPI
		return func(ctx context.Context) (map[string]file, error) {
			files := map[string]file{}
			return files, r.downwardFiles(files, source.Items, mode(source.DefaultMode))
		}, nil
	case volume.Projected != nil:
		source := volume.Projected
		tokens := map[int]*cachedToken{}
		return func(ctx context.Context) (map[string]file, error) {
			files := map[string]file{}
			defaultMode := mode(source.DefaultMode)
			for i, projection := range source.Sources {
				var err error
				switch {
				case projection.Secret != nil:
					err = r.secretFiles(files, projection.Secret.Name, projection.Secret.Items, defaultMode, optional(projection.Secret.Optional))
				case projection.ConfigMap != nil:
					err = r.configMapFiles(files, projection.ConfigMap.Name, projection.ConfigMap.Items, defaultMode, optional(projection.ConfigMap.Optional))
				case projection.DownwardAPI != nil:
					err = r.downwardFiles(files, projection.DownwardAPI.Items, defaultMode)
				case projection.ServiceAccountToken != nil:
					if tokens[i] == nil {
						tokens[i] = &cachedToken{}
					}
					var token string
					token, err = tokens[i].get(ctx, r, projection.ServiceAccountToken)
					files[projection.ServiceAccountToken.Path] = file{data: []byte(token), mode: defaultMode}
				default:
					err = fmt.Errorf("a projected source the test node agent does not support (clusterTrustBundle, podCertificate)")
				}
				if err != nil {
					return nil, err
				}
			}
			return files, nil
		}, nil
	}
	return nil, fmt.Errorf("volume type not supported by the test node agent (supported: emptyDir, hostPath, secret, configMap, downwardAPI, projected)")
}

func mode(value *int32) os.FileMode {
	if value == nil {
		return 0o644
	}
	return os.FileMode(*value)
}

func optional(value *bool) bool { return value != nil && *value }

func itemMode(item corev1.KeyToPath, fallback os.FileMode) os.FileMode {
	if item.Mode != nil {
		return os.FileMode(*item.Mode)
	}
	return fallback
}

func (r *podRuntime) secretFiles(files map[string]file, name string, items []corev1.KeyToPath, defaultMode os.FileMode, isOptional bool) error {
	secret, err := r.p.client.CoreV1().Secrets(r.pod.Namespace).Get(r.ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && isOptional {
		return nil
	}
	if err != nil {
		return fmt.Errorf("secret %q: %w", name, err)
	}
	return keyedFiles(files, "secret", name, secret.Data, items, defaultMode, isOptional)
}

func (r *podRuntime) configMapFiles(files map[string]file, name string, items []corev1.KeyToPath, defaultMode os.FileMode, isOptional bool) error {
	configMap, err := r.p.client.CoreV1().ConfigMaps(r.pod.Namespace).Get(r.ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && isOptional {
		return nil
	}
	if err != nil {
		return fmt.Errorf("configMap %q: %w", name, err)
	}
	data := map[string][]byte{}
	for key, value := range configMap.Data {
		data[key] = []byte(value)
	}
	maps.Copy(data, configMap.BinaryData)
	return keyedFiles(files, "configMap", name, data, items, defaultMode, isOptional)
}

// keyedFiles adds a Secret's or ConfigMap's keys: all of them, or the listed items.
func keyedFiles(files map[string]file, kind, name string, data map[string][]byte, items []corev1.KeyToPath, defaultMode os.FileMode, isOptional bool) error {
	if len(items) == 0 {
		for key, value := range data {
			files[key] = file{data: value, mode: defaultMode}
		}
		return nil
	}
	for _, item := range items {
		value, ok := data[item.Key]
		if !ok {
			if isOptional {
				continue
			}
			return fmt.Errorf("%s %q has no key %q", kind, name, item.Key)
		}
		files[item.Path] = file{data: value, mode: itemMode(item, defaultMode)}
	}
	return nil
}

func (r *podRuntime) downwardFiles(files map[string]file, items []corev1.DownwardAPIVolumeFile, defaultMode os.FileMode) error {
	r.mu.Lock()
	pod := r.pod.DeepCopy()
	r.mu.Unlock()
	for _, item := range items {
		if item.FieldRef == nil {
			return fmt.Errorf("downwardAPI %q: only fieldRef is supported by the test node agent", item.Path)
		}
		value, err := fieldValue(pod, item.FieldRef.FieldPath)
		if err != nil {
			return fmt.Errorf("downwardAPI %q: %w", item.Path, err)
		}
		fileMode := defaultMode
		if item.Mode != nil {
			fileMode = os.FileMode(*item.Mode)
		}
		files[item.Path] = file{data: []byte(value), mode: fileMode}
	}
	return nil
}

// fieldValue is a downward API field as a volume file holds it.
func fieldValue(pod *corev1.Pod, path string) (string, error) {
	formatMap := func(values map[string]string) string {
		var lines []string
		for _, key := range slices.Sorted(maps.Keys(values)) {
			lines = append(lines, key+"="+strconv.Quote(values[key]))
		}
		return strings.Join(lines, "\n")
	}
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "metadata.labels":
		return formatMap(pod.Labels), nil
	case "metadata.annotations":
		return formatMap(pod.Annotations), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	}
	for prefix, values := range map[string]map[string]string{"metadata.labels['": pod.Labels, "metadata.annotations['": pod.Annotations} {
		if strings.HasPrefix(path, prefix) && strings.HasSuffix(path, "']") {
			return values[strings.TrimSuffix(strings.TrimPrefix(path, prefix), "']")], nil
		}
	}
	return "", fmt.Errorf("field %q is not supported", path)
}

// cachedToken is a projected ServiceAccount token, requested again at 80% of its life
// (as a kubelet does).
type cachedToken struct {
	token   string
	renewAt time.Time
}

func (t *cachedToken) get(ctx context.Context, r *podRuntime, source *corev1.ServiceAccountTokenProjection) (string, error) {
	if t.token != "" && time.Now().Before(t.renewAt) {
		return t.token, nil
	}
	seconds := int64(3600)
	if source.ExpirationSeconds != nil {
		seconds = *source.ExpirationSeconds
	}
	var audiences []string
	if source.Audience != "" {
		audiences = []string{source.Audience}
	}
	account := r.pod.Spec.ServiceAccountName
	if account == "" {
		account = "default"
	}
	request := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         audiences,
		ExpirationSeconds: &seconds,
		BoundObjectRef: &authenticationv1.BoundObjectReference{
			Kind: "Pod", APIVersion: "v1", Name: r.pod.Name, UID: r.pod.UID,
		},
	}}
	issued, err := r.p.client.CoreV1().ServiceAccounts(r.pod.Namespace).CreateToken(ctx, account, request, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("requesting a token for serviceaccount %q: %w", account, err)
	}
	life := time.Until(issued.Status.ExpirationTimestamp.Time)
	t.token = issued.Status.Token
	t.renewAt = time.Now().Add(life * 8 / 10)
	return t.token, nil
}

// sync writes the volume's files if they changed, the way a kubelet's atomic writer
// does: into a new timestamped directory, then one rename of the `..data` link, so a
// reader never sees half an update; each top-level name links through `..data`.
func (v *contentVolume) sync(ctx context.Context) error {
	files, err := v.produce(ctx)
	if err != nil {
		return err
	}
	if v.last != nil && maps.EqualFunc(files, v.last, func(a, b file) bool {
		return a.mode == b.mode && string(a.data) == string(b.data)
	}) {
		return nil
	}
	if err := os.MkdirAll(v.dir, 0o755); err != nil {
		return err
	}
	generation := fmt.Sprintf("..%d", time.Now().UnixNano())
	for path, f := range files {
		clean := filepath.Clean(path)
		if filepath.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") || strings.HasPrefix(clean, "..") {
			return fmt.Errorf("file path %q must be relative and stay inside the volume", path)
		}
		target := filepath.Join(v.dir, generation, clean)
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(target, f.data, f.mode); err != nil {
			return err
		}
		if err := os.Chmod(target, f.mode); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(filepath.Join(v.dir, generation), 0o755); err != nil {
		return err
	}
	link := filepath.Join(v.dir, "..data_tmp")
	_ = os.Remove(link)
	if err := os.Symlink(generation, link); err != nil {
		return err
	}
	if err := os.Rename(link, filepath.Join(v.dir, "..data")); err != nil {
		return err
	}
	top := map[string]bool{}
	for path := range files {
		name := strings.SplitN(filepath.Clean(path), "/", 2)[0]
		top[name] = true
		entry := filepath.Join(v.dir, name)
		if _, err := os.Lstat(entry); err != nil {
			if err := os.Symlink(filepath.Join("..data", name), entry); err != nil {
				return err
			}
		}
	}
	entries, _ := os.ReadDir(v.dir)
	for _, entry := range entries {
		name := entry.Name()
		switch {
		case name == "..data" || name == generation:
		case strings.HasPrefix(name, ".."):
			_ = os.RemoveAll(filepath.Join(v.dir, name))
		case !top[name]:
			_ = os.Remove(filepath.Join(v.dir, name))
		}
	}
	v.last = files
	return nil
}
